"""Prompt templates for the LVLM: the emotion judge, the prompt-rewriting feedback, the chat text.

The judge answers in the format of `emojax.emotion.answer`. The feedback turn (test-time
self-promotion) answers

  <think>{critique}</think><prompt>{rewritten prompt}</prompt>

and `parse_feedback` takes the last complete prompt block, like the answer parser.

Every prompt has a short variant for the tiny world, whose byte-level LVLM sees a few
hundred tokens in all (one byte = one token): there the format is taught by SFT targets,
so the prompt only has to tell the two tasks apart and carry the numbers.
"""
from __future__ import annotations

from emojax.emotion.answer import END_THINK, THINK, Answer, format_answer, last_block, strict_blocks
from emojax.emotion.space import CATEGORIES, VA_MAX, VA_MIN, check_va

PROMPT, END_PROMPT = "<prompt>", "</prompt>"
DEFAULT_SYSTEM = "You are a helpful assistant."
SHORT_JUDGE_PROMPT = "Rate the image: valence, arousal, emotion."


def judge_prompt(short: bool = False) -> str:
  """The question asking the LVLM to reason, then answer V, A and the category."""
  if short:
    return SHORT_JUDGE_PROMPT
  example = format_answer(1.2, -0.4, "contentment", "...")
  return (
      "What emotion does this image evoke? First reason about its content, colours, light and "
      "composition inside <think></think>, then give your answer inside <answer></answer> as a "
      'JSON object with the keys "valence", "arousal" and "emotion". '
      f"Valence runs from {VA_MIN:g} (very unpleasant) to {VA_MAX:g} (very pleasant) and arousal "
      f"from {VA_MIN:g} (very calm) to {VA_MAX:g} (very excited), each with one decimal; emotion "
      f"is one of: {', '.join(CATEGORIES)}. For example: {example}")


def _judged_va(judged) -> tuple[float, float]:
  return (judged.valence, judged.arousal) if isinstance(judged, Answer) else (float(judged[0]), float(judged[1]))


def feedback_prompt(prompt: str, valence: float, arousal: float, judged=None, short: bool = False) -> str:
  """Ask the LVLM to critique the image made for `prompt` and rewrite the prompt toward (V, A).

  `judged` is what the judge read in the image (an Answer or a (V, A) pair), so the critique
  can start from the measured gap instead of re-judging.
  """
  check_va(valence, arousal)
  seen = ""
  if judged is not None:
    v, a = _judged_va(judged)
    emotion = f" ({judged.emotion})" if isinstance(judged, Answer) and judged.emotion else ""
    seen = (f" Seen V{v:+.1f} A{a:+.1f}." if short
            else f" An emotion judge read it as valence {v:.1f}, arousal {a:.1f}{emotion}.")
  if short:
    return f"Target V{valence:+.1f} A{arousal:+.1f}.{seen} Rewrite: {prompt}"
  return (
      f'This image was generated for the prompt "{prompt}". The target emotion is valence '
      f"{valence:.1f} and arousal {arousal:.1f} (both from {VA_MIN:g} to {VA_MAX:g}: valence from "
      f"unpleasant to pleasant, arousal from calm to excited).{seen} Inside <think></think>, say how "
      "the image falls short of the target emotion and what would move it there (content, colour, "
      "brightness, vividness, mood). Then, inside <prompt></prompt>, rewrite the prompt so that it "
      "keeps the same content and evokes the target emotion.")


def format_feedback(rewritten: str, critique: str = "") -> str:
  """The canonical feedback answer (SFT targets); parse_feedback inverts it for clean inputs."""
  if any(tag in s for s in (rewritten, critique) for tag in (THINK, END_THINK, PROMPT, END_PROMPT)):
    raise ValueError("critique and prompt must not contain the think/prompt tags")
  if not rewritten.strip():
    raise ValueError("empty rewritten prompt")
  return f"{THINK}{critique}{END_THINK}{PROMPT}{rewritten.strip()}{END_PROMPT}"


def parse_feedback(text) -> str | None:
  """The last complete <prompt>...</prompt> block, stripped; None if absent or blank. Never raises."""
  if not isinstance(text, str):
    return None
  span = last_block(text, PROMPT, END_PROMPT)
  if span is None:
    return None
  rewritten = text[span[0]:span[1]].strip()
  return rewritten or None


def feedback_well_formed(text) -> bool:
  """Exactly '<think>...</think><prompt>...</prompt>' (whitespace outside and between) with a non-blank prompt."""
  return isinstance(text, str) and strict_blocks(text, THINK, END_THINK, PROMPT, END_PROMPT) and parse_feedback(text) is not None


def chat_text(user_text: str, system: str | None = None) -> str:
  """Qwen2.5-VL chat text for one user turn of one image then text, ready for generation.

  Equal to what the chat template shipped with Qwen/Qwen2.5-VL-7B-Instruct
  (chat_template.json; transformers has no built-in default) renders for
  [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
  with add_generation_prompt=True, a system turn prepended when given (the template's own
  default otherwise). The one <|image_pad|> stands for the image; the processor expands it
  to the image's patch count. Tested against the template rendered by transformers.
  """
  system = DEFAULT_SYSTEM if system is None else system
  return (f"<|im_start|>system\n{system}<|im_end|>\n"
          f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{user_text}<|im_end|>\n"
          "<|im_start|>assistant\n")
