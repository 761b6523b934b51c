"""LVLM GRPO's multi-task rewards of answer texts (host-side numpy; text is parsed, not traced), each in
[0, 1] per answer, 0 for an unparsable answer:
- format:   1 if the text is well formed (see emojax.emotion.answer), else 0;
- valence:  max(0, 1 - |V̂ - V| / eps), likewise arousal. Graded, so a near miss outranks
            a far one inside a group, yet zero beyond eps, so an answer off by more than eps
            (default 1.0, a sixth of the [-3, 3] scale) earns nothing for being less wrong;
- category: 1 if the answered category equals the target, else 0.
multitask_reward sums them by weights.

Every function takes answer texts or already parsed answers (Answer or None, `parse_answers`), so a
batch is parsed once and shared.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from emojax.emotion.answer import parse_answers
from emojax.emotion.space import CATEGORIES, check_va

DEFAULT_EPS = 1.0
COMPONENTS = ("format", "valence", "arousal", "category")


def _targets(x, n: int, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.shape != (n,):
    raise ValueError(f"{name} has shape {x.shape}, expected ({n},)")
  return x


def format_reward(texts: Sequence) -> np.ndarray:
  return np.array([float(a is not None and a.well_formed) for a in parse_answers(texts)], np.float32)


def _accuracy(answers, target, field: str, eps: float) -> np.ndarray:
  if not eps > 0:
    raise ValueError(f"eps must be positive, got {eps}")
  target = _targets(target, len(answers), field)
  check_va(*((target, 0.0) if field == "valence" else (0.0, target)))
  pred = np.array([np.nan if a is None else getattr(a, field) for a in answers], np.float64)
  r = np.maximum(0.0, 1.0 - np.abs(pred - target) / eps)
  return np.where(np.isnan(pred), 0.0, r).astype(np.float32)


def valence_reward(texts: Sequence, valence, eps: float = DEFAULT_EPS) -> np.ndarray:
  return _accuracy(parse_answers(texts), valence, "valence", eps)


def arousal_reward(texts: Sequence, arousal, eps: float = DEFAULT_EPS) -> np.ndarray:
  return _accuracy(parse_answers(texts), arousal, "arousal", eps)


def _category_names(category, n: int) -> list[str]:
  """Target categories given as names or as indices into CATEGORIES."""
  category = list(np.asarray(category).reshape(-1)) if not isinstance(category, (list, tuple)) else list(category)
  if len(category) != n:
    raise ValueError(f"{len(category)} target categories for {n} answers")
  names = [CATEGORIES[c] if isinstance(c, (int, np.integer)) and 0 <= c < len(CATEGORIES) else str(c)
           for c in category]
  unknown = [c for c in names if c not in CATEGORIES]
  if unknown:
    raise ValueError(f"unknown target categories {unknown}; expected names or indices of {CATEGORIES}")
  return names


def category_reward(texts: Sequence, category) -> np.ndarray:
  answers = parse_answers(texts)
  names = _category_names(category, len(answers))
  return np.array([float(a is not None and a.emotion == c) for a, c in zip(answers, names)], np.float32)


def multitask_reward(texts: Sequence, valence, arousal, category, weights: Mapping[str, float] | None = None,
                     eps: float = DEFAULT_EPS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(sum of weight * component, {component: (B,) reward}); absent weights count 0.

  weights=None weighs the four components equally (1 each), so the total is in [0, 4].
  """
  weights = dict.fromkeys(COMPONENTS, 1.0) if weights is None else dict(weights)
  unknown = set(weights) - set(COMPONENTS)
  if unknown:
    raise ValueError(f"unknown reward components {sorted(unknown)}; known: {COMPONENTS}")
  answers = parse_answers(texts)
  parts = {
      "format": format_reward(answers),
      "valence": _accuracy(answers, valence, "valence", eps),
      "arousal": _accuracy(answers, arousal, "arousal", eps),
      "category": category_reward(answers, category),
  }
  total = np.zeros(len(answers), np.float32)
  for name, w in weights.items():
    total += np.float32(w) * parts[name]
  return total, parts
