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
    return flags.FLAGS(_resolve_config_flags(argv))
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:  # e.g. --config.no_such_field=1
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    cause = lines[-1] if lines else type(e).__name__  # config-file errors arrive wrapped with a traceback
    name = cause.strip("\"'")
    culprits = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and name in a.split("=")[0].split(".")]
    if culprits:  # ml_collections reports only the leaf name: say which override it was
      raise app.UsageError(f"unknown config field {culprits[0].removeprefix('--config.')} "
                           "(config fields are listed in the config file)") from None
    raise app.UsageError(f"bad flag or config: {cause} (config fields are listed in the config file)") from None


PACKAGE_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_path(path: str) -> str:
  """`configs/NAME.py` names the installed package's copy when no such file is under the working directory; any
  path that exists (or is absolute) is taken as it is."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  parts = os.path.normpath(path).split(os.sep)
  installed = os.path.join(PACKAGE_CONFIGS, *parts[1:])
  return installed if parts[0] == "configs" and len(parts) > 1 and os.path.isfile(installed) else path


def _resolve_config_flags(argv):
  """argv with every --config=configs/... (and --config configs/...) resolved by config_path, ':preset' kept."""
  out, argv = [], list(argv)
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      path, sep, preset = a.removeprefix("--config=").partition(":")
      a = f"--config={config_path(path)}{sep}{preset}"
    elif i and argv[i - 1] == "--config":
      path, sep, preset = a.partition(":")
      a = f"{config_path(path)}{sep}{preset}"
    out.append(a)
  return out


def load_config_module(path: str):
  """The module of a config file (path[:preset] accepted; configs/NAME.py resolved by config_path)."""
  path = config_path(path.split(":")[0])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} does not exist (give a path, or configs/NAME.py of the package)")
  spec = importlib.util.spec_from_file_location("_emojax_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_fields(flag_name: str = "config") -> config_utils.Fields:
  """The declared FIELDS of the config file the --config flag named."""
  from ml_collections import config_flags
  path = config_flags.get_config_filename(flags.FLAGS[flag_name])
  fields = getattr(load_config_module(path), "FIELDS", None)
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
