"""Rewards computed from LVLM answer texts (host-side numpy; text is parsed, not traced).

LVLM GRPO multi-task rewards, each in [0, 1] per answer, 0 for an unparsable answer:
- format:   1 if the text is well formed (see emojax.emotion.answer), else 0;
- valence:  max(0, 1 - |V̂ - V| / eps), likewise arousal. Graded, so a near miss outranks
            a far one inside a group, yet zero beyond eps, so an answer off by more than eps
            (default 1.0, a sixth of the [-3, 3] scale) earns nothing for being less wrong;
- category: 1 if the answered category equals the target, else 0.
multitask_reward sums them by weights.

Generator side: emotion_reward_from_answers scores generated images by the LVLM's reading
of them, with the colour judge's form 1 - (|dV| + |dA|) / 12 (0 if unparsable), so the
LVLM judge and the colour judge give rewards on one scale.

Every function takes answer texts or already parsed answers (Answer or None), so a batch is
parsed once and shared.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from emojax.emotion.answer import Answer, parse_answer
from emojax.emotion.space import CATEGORIES, check_va
from emojax.rewards.colour_judge import emotion_reward

DEFAULT_EPS = 1.0
COMPONENTS = ("format", "valence", "arousal", "category")


def parse_all(texts: Sequence) -> list[Answer | None]:
  """Answers of texts; entries that already are Answer (or None) pass through."""
  return [t if t is None or isinstance(t, Answer) else parse_answer(t) for t in texts]


def _targets(x, n: int, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.shape != (n,):
    raise ValueError(f"{name} has shape {x.shape}, expected ({n},)")
  return x


def format_reward(texts: Sequence) -> np.ndarray:
  return np.array([float(a is not None and a.well_formed) for a in parse_all(texts)], np.float32)


def _accuracy(answers, target, field: str, eps: float) -> np.ndarray:
  if not eps > 0:
    raise ValueError(f"eps must be positive, got {eps}")
  target = _targets(target, len(answers), field)
  check_va(*((target, 0.0) if field == "valence" else (0.0, target)))
  pred = np.array([np.nan if a is None else getattr(a, field) for a in answers], np.float64)
  r = np.maximum(0.0, 1.0 - np.abs(pred - target) / eps)
  return np.where(np.isnan(pred), 0.0, r).astype(np.float32)


def valence_reward(texts: Sequence, valence, eps: float = DEFAULT_EPS) -> np.ndarray:
  return _accuracy(parse_all(texts), valence, "valence", eps)


def arousal_reward(texts: Sequence, arousal, eps: float = DEFAULT_EPS) -> np.ndarray:
  return _accuracy(parse_all(texts), arousal, "arousal", eps)


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
  answers = parse_all(texts)
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
  answers = parse_all(texts)
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


def emotion_reward_from_answers(answers: Sequence, target_va) -> np.ndarray:
  """1 - (|V̂ - V| + |Â - A|) / 12 per answer (colour_judge.emotion_reward), 0 if unparsable.

  target_va is (B, 2), rows of (V, A), as the generator batch stacks them.
  """
  answers = parse_all(answers)
  target_va = np.asarray(target_va, np.float32)
  if target_va.shape != (len(answers), 2):
    raise ValueError(f"target_va has shape {target_va.shape}, expected ({len(answers)}, 2) rows of (V, A)")
  check_va(target_va[:, 0], target_va[:, 1])
  ok = np.array([a is not None for a in answers], bool)
  v_hat = np.array([a.valence if a is not None else np.nan for a in answers], np.float32)
  a_hat = np.array([a.arousal if a is not None else np.nan for a in answers], np.float32)
  return np.asarray(emotion_reward(v_hat, a_hat, target_va[:, 0], target_va[:, 1], valid=ok), np.float32)
