"""The LVLM's answer format, its canonical writer and a parser that never raises.

Canonical form (what `format_answer` writes and what SFT teaches):

  <think>{reasoning}</think><answer>{"valence": 1.2, "arousal": -0.4, "emotion": "contentment"}</answer>

`well_formed` (the format reward) means the whole text follows this contract: exactly one
think block, then exactly one answer block, only whitespace outside and between them, and
the block holds a strict-JSON object with exactly the keys valence and arousal (JSON
numbers) and emotion (a JSON string). It is syntax only: an emotion word outside CATEGORIES
is still well formed; the category reward judges the word.

`parse_answer` is more lenient than `well_formed`, so an answer that breaks only the form
still earns accuracy rewards (and no format reward). Accepted, with well_formed False:
- a missing or misplaced think block, text around the blocks, repeated blocks (the last
  complete answer block counts: it is what a reader takes as the final word);
- inside the answer block: single-quoted strings, a trailing comma, numbers written "+1.5",
  numbers given as strings ("1.5"), key case/whitespace ("Valence "), extra keys.
Rejected (None): no complete <answer>...</answer> pair (tags are case-sensitive, so a
truncated generation gives None), anything in the block but one flat object, a missing or
non-numeric valence or arousal, NaN/inf, and V or A outside [VA_MIN, VA_MAX]. Out of range
is not clamped: a judge that answers 4.5 misread the scale, and clamping would reward it as
if it had said 3. A missing, non-string or unknown emotion (matched case-insensitively)
keeps the answer with emotion None.

Parsing is str.find / str.count plus a hand-written scanner: linear time, no regular
expressions, so adversarial text cannot trigger catastrophic backtracking.
"""
from __future__ import annotations

import dataclasses
import json
import math

from emojax.emotion.space import CATEGORIES, VA_MAX, VA_MIN, check_va

THINK, END_THINK, ANSWER, END_ANSWER = "<think>", "</think>", "<answer>", "</answer>"
KEYS = ("valence", "arousal", "emotion")
_NUMBER_CHARS = frozenset("+-.0123456789eE")
_WS = " \t\n\r"


@dataclasses.dataclass(frozen=True)
class Answer:
  valence: float
  arousal: float
  emotion: str | None  # one of CATEGORIES, or None when missing or unknown
  reasoning: str  # the first think block's text ("" without one)
  well_formed: bool


def format_answer(valence: float, arousal: float, emotion: str, reasoning: str = "") -> str:
  """The canonical answer text, V and A rounded to 1 decimal (SFT targets).

  parse_answer(format_answer(v, a, e, r)) gives (round(v, 1), round(a, 1), e, r, True);
  inputs that would break that round trip raise ValueError rather than write a bad target.
  """
  check_va(valence, arousal)
  if emotion not in CATEGORIES:
    raise ValueError(f"emotion {emotion!r} is not one of {CATEGORIES}")
  if any(tag in reasoning for tag in (THINK, END_THINK, ANSWER, END_ANSWER)):
    raise ValueError("reasoning must not contain the think/answer tags")
  v, a = (round(float(x), 1) + 0.0 for x in (valence, arousal))  # + 0.0 turns -0.0 into 0.0
  obj = f'{{"valence": {v:.1f}, "arousal": {a:.1f}, "emotion": "{emotion}"}}'
  return f"{THINK}{reasoning}{END_THINK}{ANSWER}{obj}{END_ANSWER}"


def parse_answer(text) -> Answer | None:
  """The Answer in text, or None; never raises, whatever it is given (non-str gives None).

  `_parse` is written not to raise and is fuzzed unguarded in the tests; the guard here
  only keeps a long RL run alive should the fuzzing have missed a case.
  """
  if not isinstance(text, str):
    return None
  try:
    return _parse(text)
  except Exception:  # noqa: BLE001 -- the contract is "never raises"
    return None


def parse_answers(texts) -> list[Answer | None]:
  """parse_answer of each text; entries that already are Answer (or None) pass through, so a batch is parsed
  once and shared."""
  return [t if t is None or isinstance(t, Answer) else parse_answer(t) for t in texts]


def last_block(text: str, open_tag: str, close_tag: str) -> tuple[int, int] | None:
  """(start, end) of the content of the last complete open...close pair, or None.

  The pair is the last opener that has a closer after it, with its first such closer, so
  the content holds neither tag.
  """
  close = text.rfind(close_tag)
  start = text.rfind(open_tag, 0, close) if close >= 0 else -1
  if start < 0:
    return None
  start += len(open_tag)
  return start, text.find(close_tag, start)


def _parse(text: str) -> Answer | None:
  span = last_block(text, ANSWER, END_ANSWER)
  if span is None:
    return None
  block = text[span[0]:span[1]]
  obj, strict = _strict_object(block), True
  if obj is None:
    obj, strict = _loose_object(block), False
  if obj is None:
    return None
  fields = {k.strip().lower(): v for k, v in obj.items()}
  v, a = _va(fields.get("valence")), _va(fields.get("arousal"))
  if v is None or a is None:
    return None
  emotion = fields.get("emotion")
  emotion = emotion.strip().lower() if isinstance(emotion, str) else None
  well_formed = (strict and set(obj) == set(KEYS) and isinstance(obj["valence"], float)
                 and isinstance(obj["arousal"], float) and isinstance(obj["emotion"], str) and _strict_layout(text))
  return Answer(v, a, emotion if emotion in CATEGORIES else None, _reasoning(text), well_formed)


def _strict_layout(text: str) -> bool:
  """Exactly '<think>...</think><answer>...</answer>', whitespace allowed outside and between."""
  return strict_blocks(text, THINK, END_THINK, ANSWER, END_ANSWER)


def strict_blocks(text: str, *tags: str) -> bool:
  """text is exactly the blocks open1...close1 open2...close2 ... (tags in that order, each once),
  whitespace allowed outside and between them."""
  if any(text.count(tag) != 1 for tag in tags):
    return False
  at = [text.find(tag) for tag in tags]
  if at != sorted(at):
    return False
  ends = [0] + [at[i] + len(tags[i]) for i in range(1, len(tags), 2)]
  starts = [at[i] for i in range(0, len(tags), 2)] + [len(text)]
  return not "".join(text[e:b] for e, b in zip(ends, starts)).strip(_WS)


def _reasoning(text: str) -> str:
  start = text.find(THINK)
  end = text.find(END_THINK, start) if start >= 0 else -1
  return text[start + len(THINK):end] if end >= 0 else ""


def _reject_constant(name):
  raise ValueError(name)


def _no_duplicates(pairs):
  keys = [k for k, _ in pairs]
  if len(set(keys)) != len(keys):
    raise ValueError("duplicate key")
  return dict(pairs)


def _strict_object(block: str) -> dict | None:
  """Strict JSON object (no NaN/Infinity, no duplicate keys), numbers as float, or None."""
  try:
    obj = json.loads(block, parse_int=float, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
  except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
    return None
  return obj if isinstance(obj, dict) else None


def _va(x) -> float | None:
  """A finite V or A in range from a number or a numeric string; None otherwise."""
  if isinstance(x, str):
    x = x.strip(_WS)
    if not x or not set(x) <= _NUMBER_CHARS:
      return None
    try:
      x = float(x)
    except ValueError:
      return None
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return None
  try:
    x = float(x)
  except OverflowError:
    return None
  return x if math.isfinite(x) and VA_MIN <= x <= VA_MAX else None


def _loose_object(block: str) -> dict | None:
  """A flat {key: value, ...} with '..' or ".." strings, +numbers, a trailing comma; or None.

  Values are strings, numbers (as float), true/false/null; anything nested gives None.
  Later duplicate keys win, as in json.loads.
  """
  s = block.strip(_WS)
  if len(s) < 2 or s[0] != "{" or s[-1] != "}":
    return None
  end, i, out = len(s) - 1, _skip(s, 1), {}
  while i < end:
    key, i = _string(s, i)
    if key is None:
      return None
    i = _skip(s, i)
    if i >= end or s[i] != ":":
      return None
    value, i = _value(s, _skip(s, i + 1), end)
    if i < 0:
      return None
    out[key] = value
    i = _skip(s, i)
    if i < end:
      if s[i] != ",":
        return None
      i = _skip(s, i + 1)
  return out


def _skip(s: str, i: int) -> int:
  while i < len(s) and s[i] in _WS:
    i += 1
  return i


def _string(s: str, i: int) -> tuple[str | None, int]:
  """A quoted string at s[i] (either quote; a backslash takes the next char literally)."""
  if i >= len(s) or s[i] not in "'\"":
    return None, -1
  quote, chars, i = s[i], [], i + 1
  while i < len(s):
    c = s[i]
    if c == quote:
      return "".join(chars), i + 1
    if c == "\\" and i + 1 < len(s):
      i += 1
      c = s[i]
    chars.append(c)
    i += 1
  return None, -1


def _value(s: str, i: int, end: int):
  """(value, index after it); index -1 when s[i:end] does not start with a flat value."""
  if i >= end:
    return None, -1
  if s[i] in "'\"":
    return _string(s, i)
  for word, value in (("true", True), ("false", False), ("null", None)):
    if s.startswith(word, i):
      return value, i + len(word)
  j = i
  while j < end and s[j] in _NUMBER_CHARS:
    j += 1
  try:
    return float(s[i:j]), j
  except ValueError:
    return None, -1
