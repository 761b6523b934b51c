"""Scoring emotion answers against targets: the numbers a judge is reported by.

An unparsable answer (or a missing V/A) counts as the worst answer in range would: |error| =
3 + |target| (the distance to the far end of [-3, 3]), so failing to answer never beats any
answer; the MAE over parsed answers alone is reported beside it. A missing or unknown emotion
counts as a wrong category. The "predict the mean" baseline answers every image with the split's
mean V and mean A and its most frequent category; a judge that does not beat it has learnt the
prior, not the image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from emojax.emotion.answer import Answer, parse_answer
from emojax.emotion.space import CATEGORIES, VA_MAX, VA_MIN


def worst_error(target) -> np.ndarray:
  """The largest |error| an in-range answer can make: the distance to the far end of [-3, 3]."""
  target = np.asarray(target, np.float64)
  return np.maximum(target - VA_MIN, VA_MAX - target)


def answer_metrics(answers: Sequence, valence, arousal, category) -> dict[str, float]:
  """Scores of answers (texts, or Answer/None) against targets; see the module docstring."""
  answers = [a if a is None or isinstance(a, Answer) else parse_answer(a) for a in answers]
  ok = np.array([a is not None for a in answers])
  out = {"n": len(answers), "parse_rate": float(ok.mean()),
         "format_rate": float(np.mean([a is not None and a.well_formed for a in answers]))}
  for name, target in (("valence", valence), ("arousal", arousal)):
    target = np.asarray(target, np.float64)
    pred = np.array([getattr(a, name) if a is not None else np.nan for a in answers])
    err = np.where(ok, np.abs(pred - target), worst_error(target))
    out[f"{name}_mae"] = float(err.mean())
    out[f"{name}_mae_parsed"] = float(err[ok].mean()) if ok.any() else None  # None: nothing parsed
  if category is None:  # a dataset without Mikels categories (EMOTIC)
    out["category_acc"] = None
    return out
  names = [CATEGORIES[int(c)] for c in np.asarray(category)]
  out["category_acc"] = float(np.mean([a is not None and a.emotion == c for a, c in zip(answers, names)]))
  return out


def mean_baseline(valence, arousal, category) -> dict[str, float]:
  """Scores of answering every image with the split's mean V, mean A and majority category
  (ties: the first in CATEGORIES order); the constants themselves are included."""
  v, a = np.asarray(valence, np.float64), np.asarray(arousal, np.float64)
  out = {"baseline_valence": float(v.mean()), "baseline_arousal": float(a.mean()),
         "baseline_valence_mae": float(np.abs(v - v.mean()).mean()),
         "baseline_arousal_mae": float(np.abs(a - a.mean()).mean())}
  if category is None:
    return out | {"baseline_category": None, "baseline_category_acc": None}
  counts = np.bincount(np.asarray(category, np.int64), minlength=len(CATEGORIES))
  major = int(np.argmax(counts))
  return out | {"baseline_category": CATEGORIES[major], "baseline_category_acc": float(counts[major] / max(len(v), 1))}
