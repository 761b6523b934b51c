import json
import time

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from emojax.emotion import answer as answer_lib
from emojax.emotion.answer import Answer, format_answer, parse_answer
from emojax.emotion.prompts import (SHORT_JUDGE_PROMPT, chat_text, feedback_prompt, format_feedback, judge_prompt,
                                    parse_feedback)
from emojax.emotion.space import CATEGORIES

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
va = st.floats(-3.0, 3.0, allow_nan=False)
reasoning = st.text(max_size=40).filter(lambda s: not any(t in s for t in TAGS))
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_canonical_string_is_the_design_example():
  assert format_answer(1.2, -0.4, "contentment", "calm") == (
      '<think>calm</think><answer>{"valence": 1.2, "arousal": -0.4, "emotion": "contentment"}</answer>')
  assert '"arousal": 0.0' in format_answer(1.0, -0.04, "awe")  # no "-0.0"


@FAST
@given(va, va, st.sampled_from(CATEGORIES), reasoning)
def test_round_trip(v, a, emotion, why):
  got = parse_answer(format_answer(v, a, emotion, why))
  assert got == Answer(round(v, 1), round(a, 1), emotion, why, True)


@pytest.mark.parametrize("args", [(3.1, 0, "awe", ""), (0, float("nan"), "awe", ""), (0, 0, "joy", ""),
                                  (0, 0, "Awe", ""), (0, 0, "awe", "a</think>b")])
def test_format_refuses_what_would_not_round_trip(args):
  with pytest.raises(ValueError):
    format_answer(*args)


J = '{"valence": 1.5, "arousal": -2, "emotion": "awe"}'
OK = f"<think>r</think><answer>{J}</answer>"
# text -> (valence, arousal, emotion, well_formed), or None for "no answer"
CASES = {
    OK: (1.5, -2.0, "awe", True),
    f"  \n<think>\nr\n</think>\n\n<answer>\n{J}\n</answer>\n": (1.5, -2.0, "awe", True),
    '<think></think><answer>{"valence": 3, "arousal": -3.0, "emotion": "AWE"}</answer>': (3.0, -3.0, "awe", True),
    '<think>r</think><answer>{"valence": 0, "arousal": 0, "emotion": "joy"}</answer>': (0.0, 0.0, None, True),
    # lenient: parsed, but not well formed
    f"<answer>{J}</answer>": (1.5, -2.0, "awe", False),
    f"Sure! <think>r</think><answer>{J}</answer>": (1.5, -2.0, "awe", False),
    f"<think>r</think><answer>{J}</answer> done": (1.5, -2.0, "awe", False),
    f"<answer>{J}</answer><think>r</think>": (1.5, -2.0, "awe", False),
    f"<think>r</think><answer>{J}</answer><answer>{J.replace('1.5', '0.5')}</answer>": (0.5, -2.0, "awe", False),
    f"<think>a <think> b</think><answer>{J}</answer>": (1.5, -2.0, "awe", False),
    "<think>r</think><answer>{'valence': 1.5, 'arousal': -2, 'emotion': 'awe'}</answer>": (1.5, -2.0, "awe", False),
    '<think>r</think><answer>{"valence": 1.5, "arousal": -2, "emotion": "awe",}</answer>': (1.5, -2.0, "awe", False),
    '<think>r</think><answer>{"valence": +1.5, "arousal": -2, "emotion": "awe"}</answer>': (1.5, -2.0, "awe", False),
    '<think>r</think><answer>{"valence": "1.5", "arousal": -2, "emotion": "awe"}</answer>': (1.5, -2.0, "awe", False),
    '<think>r</think><answer>{"Valence ": 1.5, "arousal": -2, "emotion": "awe"}</answer>': (1.5, -2.0, "awe", False),
    '<think>r</think><answer>{"valence": 1.5, "arousal": -2}</answer>': (1.5, -2.0, None, False),
    '<think>r</think><answer>{"valence": 1.5, "arousal": -2, "emotion": 7}</answer>': (1.5, -2.0, None, False),
    '<think>r</think><answer>{"valence": 1.5, "arousal": -2, "emotion": "awe", "x": [1]}</answer>':
        (1.5, -2.0, "awe", False),  # extra keys
    '<think>r</think><answer>{"valence": 9, "valence": 1.5, "arousal": -2, "emotion": "awe"}</answer>':
        (1.5, -2.0, "awe", False),  # duplicate keys: the last wins, as in json.loads
    # rejected
    "": None,
    "<think>r</think>": None,
    f"<think>r</think>{J}": None,
    f"<think>r</think><answer>{J}": None,
    f"<think>r</think>{J}</answer>": None,
    f"<think>r</think><ANSWER>{J}</ANSWER>": None,
    f"<think>r</think><answer>The answer is {J}</answer>": None,
    "<think>r</think><answer>[1.5, -2, \"awe\"]</answer>": None,
    '<think>r</think><answer>{"valence": NaN, "arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": 1.5, "arousal": -Infinity, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": 1e999, "arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": "nan", "arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": 3.01, "arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": 1.5, "arousal": -3.5, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": true, "arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": null, "arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": 1..5, "arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence" 1.5, "arousal": -2, "emotion": "awe"}</answer>': None,
    '<think>r</think><answer>{"valence": 1.5 "arousal": -2, "emotion": "awe"}</answer>': None,
}


@pytest.mark.parametrize("text", list(CASES))
def test_specific_texts(text):
  got, want = parse_answer(text), CASES[text]
  if want is None:
    assert got is None
  else:
    assert got is not None and (got.valence, got.arousal, got.emotion, got.well_formed) == want


def test_reasoning_is_the_first_think_block_or_empty():
  assert parse_answer(OK).reasoning == "r"
  assert parse_answer(f"<answer>{J}</answer>").reasoning == ""
  assert parse_answer(f"<think>unclosed <answer>{J}</answer>").reasoning == ""


@pytest.mark.parametrize("bad", [None, b"<answer>{}</answer>", OK.encode(), 3, 1.5, ["x"], object()])
def test_non_strings_give_none(bad):
  assert parse_answer(bad) is None


def _check(text):
  """Parses text with the unguarded core (a bug must show here, not hide behind parse_answer's
  guard) and checks the invariants of any answer it returns."""
  got = answer_lib._parse(text)
  if got is not None:
    assert -3.0 <= got.valence <= 3.0 and -3.0 <= got.arousal <= 3.0
    assert got.emotion is None or got.emotion in CATEGORIES
    assert not got.well_formed or answer_lib._strict_layout(text)
  assert parse_answer(text) == got
  return got


FRAGMENTS = list(TAGS) + ["{", "}", "[", "]", ",", ":", '"', "'", "\\", " ", "\n", '"valence"', "'arousal'",
                          '"emotion"', '"awe"', "1.5", "-2", "+0.3", "e9", "NaN", "null", "true", ".", "-"]
soup = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join)


@FAST
@given(st.one_of(st.text(), soup))
def test_core_parser_never_raises_on_any_text(text):
  _check(text)


@st.composite
def mutated(draw):
  text = format_answer(draw(va), draw(va), draw(st.sampled_from(CATEGORIES)), draw(reasoning))
  for _ in range(draw(st.integers(1, 4))):
    i = draw(st.integers(0, len(text)))
    op = draw(st.sampled_from(("delete", "insert", "replace", "duplicate")))
    piece = draw(st.one_of(st.sampled_from(FRAGMENTS), st.text(min_size=1, max_size=3)))
    if op == "delete":
      text = text[:i] + text[i + draw(st.integers(1, 8)):]
    elif op == "insert":
      text = text[:i] + piece + text[i:]
    elif op == "replace":
      text = text[:i] + piece + text[i + len(piece):]
    else:
      text = text[:i] + text[i:i + 12] + text[i:]
  return text


@FAST
@given(mutated())
def test_mutated_answers_parse_safely(text):
  got = _check(text)
  if got is not None and got.well_formed:  # well formed means the block is strict JSON
    start = text.index("<answer>") + len("<answer>")
    assert set(json.loads(text[start:text.index("</answer>")])) == {"valence", "arousal", "emotion"}


N = 100_000
ADVERSARIAL = [
    "<answer>" * (N // 8), "</answer>" * (N // 9), "<think>" * (N // 7) + "<answer>{}</answer>",
    "<answer>" + "{" * N + "</answer>", "<answer>" + "[" * N + "</answer>",
    "<answer>{" + '"valence": 1, ' * (N // 14) + "}</answer>",
    "<answer>{'" + "\\" * N + "</answer>", "<answer>{\"valence\": " + "1" * N + "}</answer>",
    "<answer>{\"valence\": " + "-" * N + "}</answer>", "<answer>" + " " * N + "</answer>",
    "<think>" + "x" * N + "</think><answer>" + J + "</answer>", "<" * N, "<answer" * (N // 7) + ">",
]


@pytest.mark.parametrize("i", range(len(ADVERSARIAL)))
def test_long_adversarial_inputs_are_fast(i):
  t0 = time.perf_counter()
  parse_answer(ADVERSARIAL[i])
  answer_lib._parse(ADVERSARIAL[i])
  assert time.perf_counter() - t0 < 0.5


def test_prompts_state_the_contract():
  p = judge_prompt()
  assert all(c in p for c in CATEGORIES) and "-3" in p and "<think>" in p and "<answer>" in p
  example = p[p.index("<think>", p.index("For example")):]
  assert parse_answer(example).well_formed  # the prompt's own example is a valid answer
  assert judge_prompt(short=True) == SHORT_JUDGE_PROMPT and len(SHORT_JUDGE_PROMPT) < 60
  f = feedback_prompt("a red circle", 1.2, -0.4, judged=parse_answer(OK))
  assert "a red circle" in f and "1.2" in f and "-0.4" in f and "1.5" in f and "<prompt>" in f
  short = feedback_prompt("a red circle", 1.2, -0.4, judged=(0.3, 2.0), short=True)
  assert short == "Target V+1.2 A-0.4. Seen V+0.3 A+2.0. Rewrite: a red circle"
  with pytest.raises(ValueError):
    feedback_prompt("x", 4.0, 0.0)


def test_feedback_parse():
  assert parse_feedback(format_feedback(" a bright vivid circle ", "too dark")) == "a bright vivid circle"
  assert parse_feedback("<think>x</think><prompt>a</prompt> then <prompt>b</prompt>") == "b"
  assert parse_feedback("<prompt>a</prompt><prompt>truncated") == "a"
  for bad in ("<prompt>  </prompt>", "<prompt>a", "a</prompt>", "", None, b"<prompt>a</prompt>", 7):
    assert parse_feedback(bad) is None
  with pytest.raises(ValueError):
    format_feedback("a <prompt> b")


@FAST
@given(st.one_of(st.text(), st.lists(st.sampled_from(["<prompt>", "</prompt>", "a", " "]), max_size=20).map("".join)))
def test_feedback_parse_never_raises(text):
  got = parse_feedback(text)
  assert got is None or (got == got.strip() and got and "<prompt>" not in got and "</prompt>" not in got)


# The chat template shipped in Qwen/Qwen2.5-VL-7B-Instruct's chat_template.json (the reference
# chat_text must equal; transformers carries no default for it).
QWEN25_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("system", [None, "You judge emotions."])
def test_chat_text_matches_qwen25_vl_template(system):
  from transformers.utils.chat_template_utils import render_jinja_template as render
  text = judge_prompt()
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
  if system is not None:
    messages.insert(0, {"role": "system", "content": system})
  want = render([messages], chat_template=QWEN25_VL_TEMPLATE, add_generation_prompt=True)
  want = want[0][0] if isinstance(want, tuple) else want[0]
  assert chat_text(text, system) == want
  assert chat_text("hi") == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                             "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
