"""A prepared dataset at a glance (`python -m emojax.data.report` prints it): examples per split and per
category, a V-A histogram per split, and the examples/s of a full pass of each split through the grain loader
the jobs use. EMOTIC's categories are its 26 (a person may have several); the others' are the 8 Mikels ones."""
from __future__ import annotations

import os
import time

import grain.python as grain
import numpy as np

from emojax.data import emotic, sources
from emojax.emotion.space import CATEGORIES

SPLITS = ("train", "validation", "test")


def category_counts(name: str, source) -> dict[str, int]:
  names = emotic.CATEGORIES if name == "emotic" else CATEGORIES
  counts = np.zeros(len(names), np.int64)
  for i in range(len(source)):
    counts[np.atleast_1d(np.asarray(source[i]["category"] if name != "emotic" else source[i]["categories"]))] += 1
  return {n: int(c) for n, c in zip(names, counts) if c}


class FixedFields(grain.MapTransform):
  """What the jobs batch (variable-length fields such as EmoSet's object lists cannot be stacked)."""

  def map(self, record):
    return {k: record[k] for k in ("image", "valence", "arousal")}


def timed_pass(source, batch_size: int, workers: int) -> float:
  """Examples/s of one shuffled epoch through grain, records read and batched (the last partial batch kept)."""
  loader = grain.DataLoader(
      data_source=source, sampler=grain.IndexSampler(len(source), shard_options=grain.NoSharding(), shuffle=True,
                                                     num_epochs=1, seed=0),
      operations=[FixedFields(), grain.Batch(batch_size, drop_remainder=False)], worker_count=workers)
  t0, n = time.perf_counter(), 0
  for batch in loader:
    n += len(batch["valence"])
  return n / max(time.perf_counter() - t0, 1e-9)


def va_histograms(splits: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 4), squeeze=False)
  for ax, (split, (v, a)) in zip(axes[0], splits.items()):
    ax.hist2d(v, a, bins=24, range=[[-3, 3], [-3, 3]], cmap="viridis")
    ax.set(title=f"{split} ({len(v)})", xlabel="valence", ylabel="arousal", aspect="equal")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def dataset_report(name: str, data_dir: str, builder_config: str, histogram_png: str, *, batch_size: int,
                   workers: int) -> dict:
  """Counts, V-A means and loader speed per split; the V-A histograms written to histogram_png."""
  if batch_size < 1 or workers < 0:
    raise ValueError("--loader_batch_size must be >= 1 and --loader_workers >= 0")
  out = {"name": name, "config": builder_config, "data_dir": os.path.abspath(data_dir), "splits": {}}
  va = {}
  for split in SPLITS:
    source = sources.TfdsSource(name, data_dir, split, builder_config)
    va[split] = (np.array([source[i]["valence"] for i in range(len(source))], np.float32),
                 np.array([source[i]["arousal"] for i in range(len(source))], np.float32))
    out["splits"][split] = {"examples": len(source), "categories": category_counts(name, source),
                            "valence_mean": float(va[split][0].mean()) if len(source) else None,
                            "arousal_mean": float(va[split][1].mean()) if len(source) else None,
                            "loader_examples_per_s": round(timed_pass(source, batch_size, workers), 1)}
  va_histograms(va, histogram_png)
  out["histogram_png"] = os.path.abspath(histogram_png)
  return out
