"""python -m emojax.train --config=configs/<job>.py[:preset] --workdir=DIR [--config.field=value ...]

Resumes automatically from DIR's latest checkpoint; SIGTERM saves and exits cleanly.
"""
from __future__ import annotations

import logging as logging_std
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def make_task(config):
  task = config.get("task")
  if task == "generator_grpo":
    from emojax.tasks.generator_grpo import GeneratorGRPO
    return GeneratorGRPO(config)
  if task == "pretrain_generator":
    from emojax.tasks.pretrain_generator import PretrainGenerator
    return PretrainGenerator(config)
  if task == "sft_lvlm":
    from emojax.tasks.sft_lvlm import SFTLVLM
    return SFTLVLM(config)
  if task == "lvlm_grpo":
    from emojax.tasks.lvlm_grpo import LVLMGRPO
    return LVLMGRPO(config)
  raise ValueError(f"unknown config.task {task!r}; known: generator_grpo, lvlm_grpo, pretrain_generator, sft_lvlm")


class _QuietLibraries(logging_std.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; config fields are set as --config.field=value")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=configs/<job>.py is required")
  workdir = _WORKDIR.value or os.path.join("workdirs", config.task)
  import jax
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "EMOJAX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "emojax", "jax")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  from emojax import parallel, trainer
  parallel.initialize_distributed()
  result = trainer.run(config, workdir, make_task(config), progress=_PROGRESS.value)
  logging.info("finished at step %d (preempted=%s); outputs in %s", result.step, result.preempted, workdir)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:  # e.g. --config.no_such_field=1
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    cause = lines[-1] if lines else type(e).__name__  # config-file errors arrive wrapped with a traceback
    name = cause.strip("\"'")
    culprits = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and name in a.split("=")[0].split(".")]
    if culprits:  # ml_collections reports only the leaf name: say which override it was
      raise app.UsageError(f"unknown config field {culprits[0].removeprefix('--config.')} "
                           "(config fields are listed in the config file)") from None
    raise app.UsageError(f"bad flag or config: {cause} (config fields are listed in the config file)") from None


def cli():
  try:
    app.run(main, flags_parser=_parse_flags)
  except (ValueError, FileNotFoundError, FloatingPointError, app.UsageError) as e:  # bad input: one actionable line
    print(f"emojax.train: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli()
