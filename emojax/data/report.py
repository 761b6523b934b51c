"""python -m emojax.data.report --name=emoset_va --data_dir=DATA_DIR [--builder_config=64] [--out=report.png]

A prepared dataset at a glance (`emojax.data.stats`): examples per split and per category, a V-A histogram per
split saved as one PNG (`--out`, default <data_dir>/<name>_<config>_va.png), and a full pass of each split through
the grain loader the jobs use (shuffled, batched by --loader_batch_size, --loader_workers worker processes) timed
in examples/s. Prints one JSON line.

The command line lives beside its package so that its name says what it reports on; no module imports it.
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from emojax import cli
from emojax.data import stats

_NAME = flags.DEFINE_enum("name", None, ["emoset_va", "emotic", "emoshapes"], "Prepared dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir it was prepared in.")
_CONFIG = flags.DEFINE_string("builder_config", "64", "Builder config (e.g. 32, 64, 256, 256_person, tiny).")
_OUT = flags.DEFINE_string("out", "", "V-A histogram PNG ('' = <data_dir>/<name>_<config>_va.png).")
_BATCH = flags.DEFINE_integer("loader_batch_size", 64, "Batch size of the timed loader pass.")
_WORKERS = flags.DEFINE_integer("loader_workers", 0, "grain worker processes of the timed pass.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _NAME.value or not _DATA_DIR.value:
    raise app.UsageError("--name and --data_dir are required")
  png = _OUT.value or os.path.join(_DATA_DIR.value, f"{_NAME.value}_{_CONFIG.value}_va.png")
  out = stats.dataset_report(_NAME.value, _DATA_DIR.value, _CONFIG.value, png, batch_size=_BATCH.value,
                             workers=_WORKERS.value)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  cli.run(main, "emojax.data.report")
