"""What a judge should answer for an EmoShapes example: the SFT target of the tiny emotion judge.

  <think>{bg} background, {overall} overall</think><answer>{"valence": .., "arousal": ..,
  "emotion": ".."}</answer>

{bg} is the background's colour words, as the image's emotional prompt says them ("dim muted
cool"); {overall} is `emoshapes.colour_words` of the whole image. Both are read off the pixels.
The background words are the caption vocabulary the generator is steered with, so the judge
learns to name what the feedback loop rewrites; the overall words are the brightness and
saturation thirds of the very means the colour model turns into (V, A), so the reasoning is a
coarse first reading that the numbers then refine. At most 55 bytes: with the byte tokenizer
the longest target is 148 tokens incl. the end of turn (`max_target_tokens`).

A dataset photo (EmoSet-VA) has no background words: its reasoning is what its neutral prompt names
("dog, ball in a beach") and the overall colour words, "{content}, {overall} overall".
"""
from __future__ import annotations

from emojax.data import emoshapes
from emojax.emotion.answer import format_answer
from emojax.emotion.space import CATEGORIES


def background_words(emotional_prompt: str) -> str:
  """'..., on a dim muted cool background' -> 'dim muted cool'."""
  head, sep, tail = str(emotional_prompt).rpartition(emoshapes.BACKGROUND_PREFIX)
  if not sep or not tail.endswith(" background"):
    raise ValueError(f"emotional prompt {emotional_prompt!r} does not end in ', on a ... background'")
  return tail[:-len(" background")]


def is_emoshapes(emotional_prompt: str) -> bool:
  return emoshapes.BACKGROUND_PREFIX in str(emotional_prompt) and str(emotional_prompt).endswith(" background")


def reasoning(image, emotional_prompt: str, prompt: str | None = None) -> str:
  if is_emoshapes(emotional_prompt) or prompt is None:
    return f"{background_words(emotional_prompt)} background, {emoshapes.colour_words(image)} overall"
  content = str(prompt).removeprefix("a photo of ").strip() or "a scene"
  return f"{content}, {emoshapes.colour_words(image)} overall"


def target_text(image, emotional_prompt: str, valence, arousal, category, prompt: str | None = None) -> str:
  """The answer SFT teaches for one example (without the end-of-turn token); `prompt`, the neutral one, for
  dataset photos."""
  return format_answer(float(valence), float(arousal), CATEGORIES[int(category)],
                       reasoning(image, emotional_prompt, prompt))


def max_target_tokens(processor) -> int:
  """Tokens of the longest possible SFT target incl. end of turn (exact for the byte tokenizer: the
  longest words, V and A of 4 characters, the longest category name)."""
  words = "bright muted warm"
  text = format_answer(-1.5, -1.5, max(CATEGORIES, key=len), f"{words} background, {words} overall")
  return len(processor.tokenizer.encode(text)) + 1
