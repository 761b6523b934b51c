"""python -m emojax.data.report --name=emoset_va --data_dir=DATA_DIR [--builder_config=64] [--out=report.png]

A prepared dataset at a glance: examples per split and per category, a V-A histogram per split saved as one PNG
(`--out`, default <data_dir>/<name>_<config>_va.png), and a full pass of each split through the grain loader
the jobs use (shuffled, batched by --loader_batch_size, --loader_workers worker processes) timed in examples/s. Prints one
JSON line. EMOTIC's categories are its 26 (a person may have several); the others' are the 8 Mikels ones.
"""
from __future__ import annotations

import json
import os
import time

import grain.python as grain
import numpy as np
from absl import app, flags

from emojax import cli

_NAME = flags.DEFINE_enum("name", None, ["emoset_va", "emotic", "emoshapes"], "Prepared dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir it was prepared in.")
_CONFIG = flags.DEFINE_string("builder_config", "64", "Builder config (e.g. 32, 64, 256, 256_person, tiny).")
_OUT = flags.DEFINE_string("out", "", "V-A histogram PNG ('' = <data_dir>/<name>_<config>_va.png).")
_BATCH = flags.DEFINE_integer("loader_batch_size", 64, "Batch size of the timed loader pass.")
_WORKERS = flags.DEFINE_integer("loader_workers", 0, "grain worker processes of the timed pass.")


def category_counts(name: str, source) -> dict[str, int]:
  from emojax.data import emotic
  from emojax.emotion.space import CATEGORIES
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _NAME.value or not _DATA_DIR.value:
    raise app.UsageError("--name and --data_dir are required")
  if _BATCH.value < 1 or _WORKERS.value < 0:
    raise ValueError("--loader_batch_size must be >= 1 and --loader_workers >= 0")
  from emojax.data import sources
  out = {"name": _NAME.value, "config": _CONFIG.value, "data_dir": os.path.abspath(_DATA_DIR.value), "splits": {}}
  va = {}
  for split in ("train", "validation", "test"):
    source = sources.TfdsSource(_NAME.value, _DATA_DIR.value, split, _CONFIG.value)
    va[split] = (np.array([source[i]["valence"] for i in range(len(source))], np.float32),
                 np.array([source[i]["arousal"] for i in range(len(source))], np.float32))
    out["splits"][split] = {"examples": len(source), "categories": category_counts(_NAME.value, source),
                            "valence_mean": float(va[split][0].mean()) if len(source) else None,
                            "arousal_mean": float(va[split][1].mean()) if len(source) else None,
                            "loader_examples_per_s": round(timed_pass(source, _BATCH.value, _WORKERS.value), 1)}
  path = _OUT.value or os.path.join(_DATA_DIR.value, f"{_NAME.value}_{_CONFIG.value}_va.png")
  va_histograms(va, path)
  out["histogram_png"] = os.path.abspath(path)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  cli.run(main, "emojax.data.report")
