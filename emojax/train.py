"""python -m emojax.train --config=configs/<job>.py[:preset] --workdir=DIR [--config.field=value ...]

Checks every config field against its declared range first; resumes automatically from DIR's
latest checkpoint; SIGTERM saves and exits cleanly; at total_steps the job exports to DIR/export.
"""
from __future__ import annotations

import logging as logging_std
import os

from absl import flags, logging
from ml_collections import config_flags

from emojax import cli
from emojax.tasks import make_task

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and the export.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")

class _QuietLibraries(logging_std.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = cli.job_config(argv, _CONFIG.value)
  workdir = _WORKDIR.value or os.path.join("workdirs", config.task)
  cli.use_compilation_cache()
  from emojax import parallel, trainer
  parallel.initialize_distributed()
  result = trainer.run(config, workdir, make_task(config), progress=_PROGRESS.value)
  logging.info("finished at step %d (preempted=%s); outputs in %s", result.step, result.preempted, workdir)


if __name__ == "__main__":
  cli.run(main, "emojax.train")
