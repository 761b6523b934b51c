"""Per-step metrics: one JSON object per line in <workdir>/metrics.jsonl plus TensorBoard events.

metrics.jsonl is the record; the TensorBoard directory is derived from it. A run that starts at
step k (a resume, or 0) first keeps only the rows of steps <= k (rewriting the file atomically;
a half-written last line from a killed run is dropped too) and rebuilds the TensorBoard events
from them, so neither ever holds a step twice.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np

JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def read_jsonl(path: str) -> list[dict]:
  """The complete rows of a metrics file (a line cut short by a kill is skipped)."""
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and "step" in row:
        rows.append(row)
  return rows


def _scalars(row: dict):
  for k, v in row.items():
    if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
      yield k, float(v)


def _rewind(workdir: str, start_step: int) -> list[dict]:
  """Keeps the rows of steps <= start_step in metrics.jsonl (atomic rewrite) and rebuilds the
  TensorBoard events from them; returns the kept rows."""
  path = os.path.join(workdir, JSONL)
  tb_dir = os.path.join(workdir, TENSORBOARD)
  rows = [r for r in read_jsonl(path) if r["step"] <= start_step] if os.path.exists(path) else []
  if os.path.exists(path):
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)
  if os.path.exists(tb_dir) or rows:
    from tensorboardX import SummaryWriter
    fresh, old = tb_dir + ".tmp", tb_dir + ".old"
    for d in (fresh, old):
      shutil.rmtree(d, ignore_errors=True)
    tb = SummaryWriter(fresh, filename_suffix=".rewound")  # never the name of the run's own new file
    for r in rows:
      for k, v in _scalars(r):
        tb.add_scalar(k, v, r["step"])
    tb.close()
    if os.path.exists(tb_dir):
      os.replace(tb_dir, old)
    os.replace(fresh, tb_dir)
    shutil.rmtree(old, ignore_errors=True)
  return rows


class MetricWriter:

  def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _rewind(workdir, start_step)
    self._jsonl = open(os.path.join(workdir, JSONL), "a")
    from tensorboardX import SummaryWriter  # imported lazily: heavy, and unused on non-zero hosts
    self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    clean = {}
    for k, v in metrics.items():
      v = float(np.asarray(v))
      clean[k] = v if math.isfinite(v) else str(v)
    row = {"step": step, **clean}
    for k, v in _scalars(row):
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
