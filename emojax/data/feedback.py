"""The tiny world's prompt feedback: content words, the colour model's inverse, rewrites and critiques.

EmoShapes prompts list "a {kind} {place}" phrases; emotional prompts put colour adjectives before
each kind and end in ", on a {adjectives} background". A rewrite toward a target (V, A) must keep
the content (the same (kind, place) phrases, none lost or invented) and only choose adjectives.

The colour model (`emojax.emotion.colour`) is linear in an image's mean HSV brightness B and
saturation S, so a target (V, A) has a closed-form inverse (`colour.brightness_saturation_for`:
P = (V + 3) 0.91 / 6, R = (A + 3) 0.91 / 6 - 0.31, solved for (B, S), clipped to [0, 1]^2). Adjectives name B and S by thirds, as the world's own prompts do.
Hue does not enter the model: the oracle paints shapes "cool" on a "warm" background (or the
reverse) so they stay visible at the same B and S.
"""
from __future__ import annotations

import re

import numpy as np

from emojax.data import emoshapes
from emojax.data.emoshapes import BACKGROUND_PREFIX, PLACES, SHAPES, colour_adjectives, join_phrases
from emojax.emotion.colour import brightness_saturation_for
from emojax.emotion.prompts import feedback_prompt, format_feedback

# longest place first, so "at the top" never matches the start of "at the top left"
_PHRASE = re.compile(r"\b(%s)\b\s+(?:[a-z]+\s+)*?(%s)\b" % (
    "|".join(SHAPES), "|".join(sorted(map(re.escape, PLACES), key=len, reverse=True))))
_KIND = re.compile(r"\b(%s)s?\b" % "|".join(SHAPES))
_PLACE_WORDS = re.compile(r"\b(left|right|top|bottom|center|centre|middle)\b")
_STEP = 0.1  # brightness / saturation gaps below this are "close"


def content(prompt: str) -> list[tuple[str, str]]:
  """The (kind, place) phrases of an EmoShapes prompt, neutral or emotional, in order."""
  return [(m.group(1), m.group(2)) for m in _PHRASE.finditer(prompt.lower())]


def content_kept(neutral: str, rewritten: str) -> bool:
  """True when `rewritten` names exactly the neutral prompt's shapes in their places: none lost, none
  moved, none invented (also no stray shape or place word outside a phrase)."""
  want, got = content(neutral), content(rewritten)
  if not want or sorted(want) != sorted(got):
    return False
  low = rewritten.lower()
  stray_kinds = len(_KIND.findall(low)) != len(got)
  stray_places = len(_PLACE_WORDS.findall(low)) != sum(len(_PLACE_WORDS.findall(p)) for _, p in got)
  return not (stray_kinds or stray_places)


def oracle_rewrite(neutral: str, valence: float, arousal: float) -> str:
  """The neutral prompt with the adjectives whose colour reads as (V, A): every region at the inverse's
  (B, S); shapes cool on a warm background when V >= 0 (warm on cool otherwise), so they stay visible."""
  phrases = content(neutral)
  if not phrases:
    raise ValueError(f"no '<shape> <place>' phrase in the prompt {neutral!r}; cannot rewrite it")
  b, s = brightness_saturation_for(valence, arousal)
  warm_background = valence >= 0
  shape_words = colour_adjectives(b, s, warm=not warm_background)
  return (join_phrases([f"a {shape_words} {kind} {place}" for kind, place in phrases])
          + f"{BACKGROUND_PREFIX}{colour_adjectives(b, s, warm=warm_background)} background")


def critique(target_va, judged_va, short: bool = False) -> str:
  """What the judged image lacks against the target, in brightness and vividness, e.g.
  "read as V -1.2 A +0.5 against V +1.0 A -2.0: too dark and too vivid; make it brighter and more muted"
  (short: "too dark and too vivid", for the byte-level tiny LVLM)."""
  (tv, ta), (jv, ja) = (tuple(map(float, target_va)), tuple(map(float, judged_va)))
  tb, ts = brightness_saturation_for(tv, ta)
  jb, js = brightness_saturation_for(float(np.clip(jv, -3, 3)), float(np.clip(ja, -3, 3)))
  faults, fixes = [], []
  if abs(tb - jb) >= _STEP:
    faults.append("too dark" if tb > jb else "too bright")
    fixes.append("brighter" if tb > jb else "darker")
  if abs(ts - js) >= _STEP:
    faults.append("too muted" if ts > js else "too vivid")
    fixes.append("more vivid" if ts > js else "more muted")
  gap = " and ".join(faults) if faults else "close to the target"
  if short:
    return gap
  seen = f"read as V {jv:+.1f} A {ja:+.1f} against V {tv:+.1f} A {ta:+.1f}"
  return f"{seen}: {gap}" + (f"; make it {' and '.join(fixes)}" if fixes else "")


def feedback_turn(prompt: str, target, judged, short: bool = True) -> tuple[str, str]:
  """(question, SFT answer) of one feedback turn: the question carries `prompt` (the neutral prompt: the
  content to keep), the target and the judged reading; the answer critiques the gap and rewrites the
  prompt with the oracle's adjectives for the target. Targets print with one decimal, so pass them rounded."""
  tv, ta = (float(x) for x in target)
  judged = tuple(float(x) for x in judged)
  answer = format_feedback(oracle_rewrite(prompt, tv, ta), critique((tv, ta), judged, short=short))
  return feedback_prompt(prompt, tv, ta, judged, short=short), answer


def task_questions(raw: dict, judge_question: str, short: bool = True) -> list[str]:
  """The question of each row of an LVLM loader batch: the judge question, or where raw["task"] is 1
  (`pipeline.FeedbackTask`) the feedback question on the row's neutral prompt, its feedback target and
  the image's own V-A as the judged reading."""
  tasks = raw.get("task", np.zeros(len(raw["image"]), np.int32))
  return [feedback_prompt(str(raw["prompt"][i]), float(raw["feedback_valence"][i]), float(raw["feedback_arousal"][i]),
                          (float(raw["valence"][i]), float(raw["arousal"][i])), short=short)
          if tasks[i] else judge_question for i in range(len(tasks))]


def longest_turn(short: bool = True) -> tuple[str, str]:
  """The longest feedback question and answer the tiny world can make (three shapes of the longest kind
  in the longest places, the longest adjectives and critique, four-character numbers), for length bounds."""
  places = sorted(PLACES, key=len)[-3:]
  neutral = join_phrases([f"a {max(SHAPES, key=len)} {p}" for p in places])
  words = "bright muted cool"  # as long as any colour_adjectives output
  question = feedback_prompt(neutral, -1.5, -1.5, (-1.5, -1.5), short=short)
  rewritten = join_phrases([f"a {words} {max(SHAPES, key=len)} {p}" for p in places]) + f"{BACKGROUND_PREFIX}{words} background"
  return question, format_feedback(rewritten, "too bright and too muted" if short else critique((3, -3), (-3, 3)))


def feedback_example(seed: int, index: int, size: int = 32, target_std: float = 0.3) -> dict:
  """One procedural feedback (SFT) example of world `seed`: the image of example `index` stands for a
  generation of its neutral prompt; the target is the V-A of another example of the world (index + 1 of
  world seed + 1) jittered by `target_std` and clipped, so targets follow the world's own distribution;
  the judged reading is the image's exact V-A; the answer is `feedback_turn`'s. A pure function of its
  arguments."""
  e = emoshapes.make_example(seed, index, size)
  other = emoshapes.make_example(seed + 1, index + 1, size)
  rng = np.random.default_rng((seed, index, 7))
  target = np.clip(np.array([other["valence"], other["arousal"]], np.float64) + rng.normal(0, target_std, 2), -3, 3)
  tv, ta = (round(float(x), 1) for x in target)  # the question prints one decimal; the answer must match it
  judged = (float(e["valence"]), float(e["arousal"]))
  question, answer = feedback_turn(e["prompt"], (tv, ta), judged)
  return dict(image=e["image"], prompt=e["prompt"], valence=np.float32(tv), arousal=np.float32(ta),
              judged_valence=np.float32(judged[0]), judged_arousal=np.float32(judged[1]),
              question=question, answer=answer, rewritten=oracle_rewrite(e["prompt"], tv, ta))
