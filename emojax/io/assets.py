"""emojax weight directories ("exports"): config.json + params.safetensors (flat '/'-joined names).

The shipped tiny assets live in emojax/assets/<name>/, jobs export to <workdir>/export/; real
weights come from Hugging Face directories the user names (`emojax.io.hf_weights`). Nothing here
downloads anything.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

ASSET_ROOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")


def asset_dir(name: str) -> str:
  return os.path.join(ASSET_ROOT, name)


def is_export(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, "params.safetensors")) and os.path.isfile(
      os.path.join(directory, "config.json"))


def save_directory(directory: str, write: Callable[[str], None], is_export: Callable[[str], bool]) -> None:
  """Writes an export directory atomically: `write(tmp_dir)` fills a temporary directory that is then
  renamed over the target, so a kill leaves the old export or the new one, never half of one. A
  non-empty directory for which is_export is false is refused, never replaced."""
  directory = os.path.abspath(directory)
  if os.path.isdir(directory) and os.listdir(directory) and not is_export(directory):
    raise FileExistsError(f"refusing to export into {directory}: it is not empty and holds no export; "
                          "choose an empty or new directory")
  tmp, old = directory + ".tmp", directory + ".old"
  for d in (tmp, old):
    shutil.rmtree(d, ignore_errors=True)  # left by a killed export
  os.makedirs(tmp)
  write(tmp)
  if os.path.exists(directory):
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old)
  else:
    os.replace(tmp, directory)


def save(directory: str, params: Any, config: dict[str, Any], dtype=np.float32,
         write_more: Callable[[str], None] | None = None) -> None:
  """An emojax export (config.json + params.safetensors), atomically (`save_directory`);
  `write_more(tmp_dir)` adds files (e.g. the MMDiT in the diffusers layout)."""
  def write(tmp):
    flat = traverse_util.flatten_dict(params, sep="/")
    save_file({k: np.asarray(v, dtype) for k, v in flat.items()}, os.path.join(tmp, "params.safetensors"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=1, sort_keys=True)
    if write_more is not None:
      write_more(tmp)
  save_directory(directory, write, is_export)


def load(directory: str, what: str, how_to_make: str) -> tuple[Any, dict[str, Any]]:
  """Returns (params as nested dict of float32 numpy, config dict); one-line errors."""
  cfg_path = os.path.join(directory, "config.json")
  w_path = os.path.join(directory, "params.safetensors")
  for p in (cfg_path, w_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"{what}: missing {p}; {how_to_make}")
  with open(cfg_path) as f:
    config = json.load(f)
  flat = {k: v.astype(np.float32) for k, v in load_file(w_path).items()}
  return traverse_util.unflatten_dict(flat, sep="/"), config


def check_tree_matches(loaded: Any, expected_shapes: Any, what: str) -> None:
  """One-line error naming the first missing, unexpected or mis-shaped parameter."""
  a = traverse_util.flatten_dict(loaded, sep="/")
  b = traverse_util.flatten_dict(expected_shapes, sep="/")
  missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
  if missing:
    raise ValueError(f"{what}: weights lack {len(missing)} parameters, first {missing[0]!r} (config does not match the weights)")
  if extra:
    raise ValueError(f"{what}: weights have {len(extra)} unexpected parameters, first {extra[0]!r} (config does not match the weights)")
  for k in sorted(b):
    if tuple(a[k].shape) != tuple(b[k].shape):
      raise ValueError(f"{what}: parameter {k!r} has shape {tuple(a[k].shape)}, config expects {tuple(b[k].shape)}")
