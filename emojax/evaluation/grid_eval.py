"""One generator evaluation over a prompt x V-A grid, without its files: the images of every (prompt, V, A) (one each, or
the test-time feedback loop's kept image) read by every judge. `emojax.evaluate` writes it out;
`emojax.ablate` runs it for every row of its table with the judges loaded once."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
from absl import logging

from emojax.data import emoshapes
from emojax.evaluation import report
from emojax.pipelines import policy as policy_lib


@dataclasses.dataclass
class Judges:
  lvlm: object  # rewards.lvlm_emotion.LVLMJudgeReward (also the feedback loop's rewriter)
  preference: object  # rewards.clip_scores.PickScoreReward

  @classmethod
  def from_config(cls, c) -> "Judges":
    from emojax.rewards.clip_scores import PickScoreReward
    from emojax.rewards.lvlm_emotion import LVLMJudgeReward
    return cls(LVLMJudgeReward.from_config(c.lvlm), PickScoreReward.from_config(c.preference))


def grid_prompts(c) -> tuple[list[str], list[dict]]:
  """(prompts, their EmoShapes examples or []) of an evaluation config: `prompts_file` or the split's neutral prompts."""
  examples = [] if c.prompts_file else [emoshapes.make_example(c.data.seed, i) for i in range(c.data.num_prompts)]
  return (report.read_prompts(c.prompts_file) if c.prompts_file else [ex["prompt"] for ex in examples]), examples


def run(c, judges: Judges, rows_prompts, va, *, progress: bool = False) -> dict:
  """{"summary", "rows", "images", "traces" (None without feedback)} for rows_prompts[i] at va[i]."""
  policy = policy_lib.load(c.generator)
  t0 = time.perf_counter()
  traces = None
  if c.feedback.rounds:
    from emojax.data.feedback import content_kept
    from emojax.pipelines import feedback_loop as fl
    models = fl.policy_models(policy, policy.params, judges.lvlm, judges.preference.scorer, seed=c.seed,
                              num_steps=c.num_steps, shift=c.shift, cfg_scale=c.cfg_scale, batch_size=c.batch_size,
                              rewriter=c.feedback.rewriter)
    traces = fl.run(rows_prompts, va, models, rounds=c.feedback.rounds, images_per_round=c.feedback.images_per_round,
                    stop_error=c.feedback.stop_error, rewrite=c.feedback.rewrite, content_kept=content_kept,
                    progress=progress)
    images = np.stack([t["best_image"] for t in traces])
  else:
    images = policy.generate_uint8(policy.params, rows_prompts, va, seed=c.seed, batch_size=c.batch_size,
                                   num_steps=c.num_steps, shift=c.shift, cfg_scale=c.cfg_scale, progress=progress)
  logging.info("generated %d images in %.1f s", len(images), time.perf_counter() - t0)
  rows = report.judge_rows(images, rows_prompts, va, lvlm_answers=judges.lvlm.answers(images),
                           scorer=judges.preference.scorer, iqa_pair=judges.preference.iqa_pair)
  summary = report.summary(rows)
  if traces is not None:
    summary |= report.feedback_summary(traces, fl.best_so_far(traces), va, c.feedback.to_dict())
  return {"summary": summary, "rows": rows, "images": images, "traces": traces}
