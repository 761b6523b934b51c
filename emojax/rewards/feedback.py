"""Rewards of the LVLM's feedback answers (host-side numpy over texts), each in [0, 1] per answer:

- format:  1 if the answer is exactly <think>critique</think><prompt>rewritten prompt</prompt>
           (emojax.emotion.prompts.feedback_well_formed), else 0;
- content: 1 if the rewritten prompt parses and keeps the neutral prompt's content (every shape in
           its place, none lost, moved or invented: emojax.data.feedback.content_kept), else 0.

What a rewrite achieves (the generator renders it, the LVLM judge scores the image against the
target) needs the generator and the judge, so the feedback task composes that reward itself.
"""
from __future__ import annotations

from typing import Sequence

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
