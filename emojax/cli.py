"""What every emojax command line shares: flag parsing with one-line errors, the config file's declared
fields' ranges checked before anything runs, the compilation cache, and exit code 2 for bad input."""
from __future__ import annotations

import importlib.util
import os
import sys

from absl import app, flags, logging

from emojax import config_utils

BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, app.UsageError)


def parse_flags(argv):
  """absl flag parsing whose errors are one line naming the culprit (a --config.field override)."""
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


def config_fields(flag_name: str = "config") -> config_utils.Fields:
  """The declared FIELDS of the config file the --config flag named."""
  from ml_collections import config_flags
  path = config_flags.get_config_filename(flags.FLAGS[flag_name]).split(":")[0]  # drop a ":preset" suffix
  spec = importlib.util.spec_from_file_location("_emojax_config_fields", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  fields = getattr(module, "FIELDS", None)
  if not isinstance(fields, config_utils.Fields):
    raise ValueError(f"{path} declares no FIELDS (config_utils.Fields: every field's default, range and doc)")
  return fields


def check_config(config, flag_name: str = "config") -> None:
  """Every field within its declared range (one-line ValueError otherwise)."""
  config_utils.validate(config, config_fields(flag_name))


def job_config(argv, config, usage: str = "--config=configs/<job>.py is required"):
  """The checked config of a command line that takes only flags: no positional arguments, a --config given, every
  field within its declared range."""
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; config fields are set as --config.field=value")
  if config is None:
    raise ValueError(usage)
  check_config(config)
  return config


def simulate_devices(n: int) -> None:
  """n simulated CPU devices for this process: call before jax initialises its backends."""
  import re
  flags_env = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags_env} --xla_force_host_platform_device_count={n}".strip()
  os.environ["JAX_PLATFORMS"] = "cpu"


def use_compilation_cache() -> None:
  import jax
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "EMOJAX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "emojax", "jax")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def run(main, prog: str) -> None:
  """app.run(main) where bad input is `<prog>: error: <one line>` on stderr and exit code 2; a lost peer process
  (multi-process runs) is one line and exit code 3, without JAX's shutdown barrier (it cannot pass without the
  dead process and would abort after its heartbeat timeout)."""
  from emojax.parallel import PeerLostError
  try:
    app.run(main, flags_parser=parse_flags)
  except BAD_INPUT as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except PeerLostError as e:
    print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
    logging.flush()
    os._exit(3)
