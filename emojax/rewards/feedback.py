"""Rewards of the LVLM's feedback answers (host-side numpy over texts), each in [0, 1] per answer:

- format:  1 if the answer is exactly <think>critique</think><prompt>rewritten prompt</prompt>
           (emojax.emotion.prompts.feedback_well_formed), else 0;
- content: 1 if the rewritten prompt parses and keeps the neutral prompt's content (every shape in
           its place, none lost, moved or invented: emojax.data.feedback.content_kept), else 0.

- valence, arousal: what the rewrite achieves. The generator renders the rewritten prompt at the target
           (`renders` images from noise shared by every answer of a group, so a group's answers differ
           only in their words), a judge reads each image, and the component is max(0, 1 - |err| / eps)
           averaged over the renders; 0 for an answer that fails `content` (nothing is rendered for it).

The generator and the judge are arguments (`render`, `read`), so this module needs neither.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from emojax.data.feedback import content_kept
from emojax.emotion.prompts import feedback_well_formed, parse_feedback


def format_reward(texts: Sequence) -> np.ndarray:
  return np.array([float(feedback_well_formed(t)) for t in texts], np.float32)


def content_reward(texts: Sequence, neutral_prompts: Sequence[str]) -> np.ndarray:
  if len(texts) != len(neutral_prompts):
    raise ValueError(f"{len(texts)} feedback answers for {len(neutral_prompts)} neutral prompts")
  out = []
  for text, neutral in zip(texts, neutral_prompts):
    rewritten = parse_feedback(text)
    out.append(float(rewritten is not None and content_kept(neutral, rewritten)))
  return np.array(out, np.float32)


def feedback_metrics(texts, examples) -> dict[str, float]:
  """Feedback answers against their examples ({"prompt", "rewritten"}): format_rate and content_rate (the
  format and content rewards' means), exact_rate (the rewrite is the oracle's, adjectives too)."""
  mean = lambda x: float(np.mean(x, dtype=np.float64))
  return {"format_rate": mean(format_reward(texts)),
          "content_rate": mean(content_reward(texts, [e["prompt"] for e in examples])),
          "exact_rate": mean([parse_feedback(t) == e["rewritten"] for t, e in zip(texts, examples)])}


COMPONENTS = ("format", "content", "valence", "arousal")


def effect_reward(texts: Sequence, neutral_prompts: Sequence[str], targets, noise_ids, *, render: Callable,
                  read: Callable, eps: float, renders: int = 1) -> dict[str, np.ndarray]:
  """valence and arousal components (N,) of feedback answers, and the judged errors of their renders.

  targets (N, 2); noise_ids (N,) ints, the same within a group; render(prompts, va (M, 2), noise_ids (M,))
  -> uint8 images (M, H, W, 3); read(images) -> parsed judge answers (None where unparsed, which scores
  as the worst reading). Errors of answers that are not rendered are NaN."""
  n = len(texts)
  targets = np.asarray(targets, np.float32).reshape(n, 2)
  noise_ids = np.asarray(noise_ids, np.int64).reshape(n)
  if len(neutral_prompts) != n:
    raise ValueError(f"{n} feedback answers for {len(neutral_prompts)} neutral prompts")
  if eps <= 0 or renders < 1:
    raise ValueError(f"eps must be > 0 and renders >= 1; got eps={eps}, renders={renders}")
  out = {k: np.zeros(n, np.float32) for k in ("valence", "arousal")}
  out |= {k: np.full(n, np.nan, np.float32) for k in ("v_abs_err", "a_abs_err")}
  rewrites = [parse_feedback(t) for t in texts]
  keep = [i for i, r in enumerate(rewrites) if r is not None and content_kept(neutral_prompts[i], r)]
  if not keep:
    return out
  rows = np.repeat(np.array(keep), renders)
  images = render([rewrites[i] for i in rows], targets[rows], noise_ids[rows] * renders + np.tile(np.arange(renders), len(keep)))
  answers = read(images)
  for j, (name, err) in enumerate((("valence", "v_abs_err"), ("arousal", "a_abs_err"))):
    got = np.array([np.clip(getattr(a, name), -3, 3) if a is not None and getattr(a, name) is not None else np.nan
                    for a in answers], np.float32)
    t = targets[rows, j]
    ok, diff = np.isfinite(got), np.abs(got - t)
    out[err][keep] = np.where(ok, diff, np.maximum(3.0 - t, t + 3.0)).reshape(len(keep), renders).mean(1)
    out[name][keep] = np.where(ok, np.maximum(0.0, 1.0 - diff / eps), 0.0).reshape(len(keep), renders).mean(1)
  return out


def feedback_reward(texts: Sequence, neutral_prompts: Sequence[str], targets, noise_ids, weights: Mapping[str, float],
                    *, render: Callable, read: Callable, eps: float, renders: int = 1):
  """(sum of weight * component, {component or error: (N,)}) of feedback answers: format, content,
  valence, arousal (`effect_reward`), each in [0, 1]."""
  unknown = set(weights) - set(COMPONENTS)
  if unknown:
    raise ValueError(f"unknown feedback reward components {sorted(unknown)}; known: {COMPONENTS}")
  parts = {"format": format_reward(texts), "content": content_reward(texts, neutral_prompts)}
  if weights.get("valence", 0) or weights.get("arousal", 0):
    parts |= effect_reward(texts, neutral_prompts, targets, noise_ids, render=render, read=read, eps=eps,
                           renders=renders)
  total = sum(float(weights.get(k, 0.0)) * parts[k] for k in COMPONENTS if k in parts)
  return np.asarray(total, np.float32), parts
