"""How well a preference model prefers pictures: held-out procedural pairs by fault kind, the
quality antonym pair, and pure colour noise (what a hacked generator paints) against clean renders.

`score(images uint8, captions) -> (N,)` is any scorer (ClipScorer.pickscore, or a training model's);
`iqa(images) -> (N,)` its CLIP-IQA probability of "clean".
"""
from __future__ import annotations

import numpy as np

from emojax.data import emoshapes, preference_pairs as pp


def held_out_pairs(seed: int, per_kind: int, size: int = 32) -> dict[str, dict[str, np.ndarray]]:
  """{kind: {"caption", "preferred", "rejected"}} with per_kind pairs of each fault kind."""
  out = {}
  for k, kind in enumerate(pp.KINDS):
    pairs = [pp.make_pair(seed, k * per_kind + i, size, kind=kind) for i in range(per_kind)]
    out[kind] = {"caption": [p["caption"] for p in pairs], "preferred": np.stack([p["preferred"] for p in pairs]),
                 "rejected": np.stack([p["rejected"] for p in pairs])}
  return out


def pure_noise(seed: int, n: int, size: int = 32) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(emotional prompts, their clean renders, pure colour noise images)."""
  ex = [emoshapes.make_example(seed, i, size) for i in range(n)]
  rng = np.random.default_rng((seed, 2))
  noise = np.stack([np.round(pp.noise_field(size, size, rng)).astype(np.uint8) for _ in ex])
  return [e["emotional_prompt"] for e in ex], np.stack([e["image"] for e in ex]), noise


def evaluate(score, iqa, pairs: dict, noise: tuple) -> dict[str, float]:
  """pref_acc/<kind> (the preferred image scores higher), iqa_acc/<kind> (image faults only: clean > 0.5 on
  the preferred, < 0.5 on the rejected), noise_below_clean (pure noise scores under the clean render of
  its prompt) and the mean scores of both."""
  out = {}
  for kind, p in pairs.items():
    good, bad = score(p["preferred"], p["caption"]), score(p["rejected"], p["caption"])
    out[f"pref_acc/{kind}"] = float(np.mean(good > bad))
    if kind in pp.IMAGE_FAULTS:
      out[f"iqa_acc/{kind}"] = float((np.mean(iqa(p["preferred"]) > 0.5) + np.mean(iqa(p["rejected"]) < 0.5)) / 2)
  out["pref_acc_min"] = min(v for k, v in out.items() if k.startswith("pref_acc/"))
  prompts, clean, noisy = noise
  s_clean, s_noise = score(clean, prompts), score(noisy, prompts)
  out.update(noise_below_clean=float(np.mean(s_noise < s_clean)), score_clean=float(s_clean.mean()),
             score_noise=float(s_noise.mean()))
  return out
