"""The generator jobs' evaluation during training (their eval/* metrics): a fixed prompt x V-A set sampled from
fixed noise, judged by the colour judge (emotion), the layout judge (shapes, tiny world) and optionally the
preference model."""
from __future__ import annotations

import jax
import numpy as np

from emojax import parallel
from emojax.data import emoshapes
from emojax.emotion.colour import colour_judge
from emojax.evaluation import layout
from emojax.evaluation.report import min_cell_mean
from emojax.io import images as images_io


class EvalSet:
  """A fixed set of prompts and V-A targets, sampled with the ODE from fixed noise.

  Measures what the colour judge (trained by nobody) says of the generator's images against
  the requested emotion, and what the layout judge says of their shapes against the prompt,
  so runs are comparable before and after training.
  source="grid": neutral prompts x a grid of V-A targets (emotion must come from V-A input);
  source="emotional": held-out emotional prompts, each with its own image's V-A (emotion
  must come from the words).
  """

  def __init__(self, policy, *, num_prompts: int, seed: int, num_steps: int, shift: float, cfg_scale: float,
               source: str = "grid", targets_per_axis: int = 3, preference=None):
    """policy: an emojax.pipelines.policy generator (TinyPolicy(gen, gcfg) for a bare tiny generator)."""
    examples = [emoshapes.make_example(seed, i, policy.image_size) for i in range(num_prompts)]
    if source == "grid":
      grid = np.linspace(-2.4, 2.4, targets_per_axis, dtype=np.float32)
      va = np.array([(v, a) for v in grid for a in grid], np.float32)
      self.ncol = len(va)
      self.prompts = [e["prompt"] for e in examples for _ in va]
      self.va = np.tile(va, (num_prompts, 1))
    elif source == "emotional":
      self.ncol = 8
      self.prompts = [e["emotional_prompt"] for e in examples]
      self.va = np.array([(e["valence"], e["arousal"]) for e in examples], np.float32)
    else:
      raise ValueError(f"unknown eval source {source!r}; use 'grid' or 'emotional'")
    self.policy, self.kw = policy, dict(num_steps=num_steps, shift=shift, cfg_scale=cfg_scale)
    self.key = jax.random.key(seed)
    self.preference = preference  # a PickScoreReward: eval/pickscore (scaled, as the reward) and eval/clip_iqa

  def sample(self, params) -> jax.Array:
    """The set's images under `params`: fixed prompts, targets and noise, ODE."""
    return self.policy.sample(params, self.prompts, self.va, self.key, **self.kw)

  def __call__(self, params, png_path: str | None = None) -> dict[str, float]:
    images = parallel.to_host(self.sample(params))  # every process calls this (it may gather)
    v, a = jax.device_get(colour_judge(images))
    if png_path and jax.process_index() == 0:
      images_io.save_grid(images, png_path, self.ncol)
    scores = layout.layout_scores(images, self.prompts) if self.policy.layout_judge else {}
    if self.preference is not None:
      pick, extra = self.preference(images, {"prompt": self.prompts})
      scores |= {"pickscore": float(np.mean(pick)), "clip_iqa": float(np.mean(extra["clip_iqa"])),
                 "pickscore_min_cell": min_cell_mean(pick, self.va[:, 0], self.va[:, 1])}
    return {**{"eval/" + k.replace("/", "_"): x for k, x in scores.items()},
            "eval/v_abs_err": float(np.abs(v - self.va[:, 0]).mean()),
            "eval/a_abs_err": float(np.abs(a - self.va[:, 1]).mean()),
            "eval/v_corr": float(np.corrcoef(v, self.va[:, 0])[0, 1]),
            "eval/a_corr": float(np.corrcoef(a, self.va[:, 1])[0, 1])}
