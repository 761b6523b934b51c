"""Hugging Face weight files: reading one safetensors file or an index of shards, and writing a
model directory (config.json + <stem>.safetensors) that diffusers / transformers load."""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np


def read_safetensors(directory: str, stem: str, what: str) -> dict[str, np.ndarray]:
  """{name: array} from `<stem>.safetensors` or the shards `<stem>.safetensors.index.json` lists.

  `what` names the weights in the error a missing file raises ("the SD3 transformer weights").
  The numpy backend keeps stored dtypes (bf16 arrives as ml_dtypes.bfloat16).
  """
  from safetensors import safe_open

  single = os.path.join(directory, f"{stem}.safetensors")
  index = f"{single}.index.json"
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    with open(index) as f:
      files = [os.path.join(directory, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
  else:
    raise FileNotFoundError(f"no {stem}.safetensors (or sharded {stem}-0000x-of-0000y.safetensors with "
                            f"{os.path.basename(index)}) in {directory}: put {what} there")
  state = {}
  for path in files:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is listed in {index} but missing: copy the shard into {directory}")
    with safe_open(path, framework="np") as f:
      for k in f.keys():
        state[k] = f.get_tensor(k)
  return state


def write_pretrained(directory: str, stem: str, state: dict[str, np.ndarray], config: dict) -> None:
  """`<directory>/config.json` + `<directory>/<stem>.safetensors` (one file), e.g. a diffusers model
  directory (`stem` "diffusion_pytorch_model") that `from_pretrained` reads."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  save_file({k: np.array(v, order="C") for k, v in state.items()}, os.path.join(directory, f"{stem}.safetensors"))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f, indent=1, sort_keys=True)


def key_list(keys, n: int = 5) -> str:
  """The first n keys and how many there are, for an error line."""
  keys = list(keys)
  return ", ".join(keys[:n]) + (f", ... ({len(keys)} total)" if len(keys) > n else "")


def kernel_to_flax(w: np.ndarray) -> np.ndarray:
  """torch Linear (out, in) -> Dense (in, out); Conv2d (O, I, kh, kw) -> Conv (kh, kw, I, O)."""
  return w.T if w.ndim == 2 else w.transpose(2, 3, 1, 0)


def kernel_to_torch(w: np.ndarray) -> np.ndarray:
  """Inverse of `kernel_to_flax`."""
  return w.T if w.ndim == 2 else w.transpose(3, 2, 0, 1)


def _torch_shape(shape: tuple) -> tuple:
  return tuple(shape[::-1]) if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])


def to_params(state: dict[str, np.ndarray], shapes: dict[tuple, Any], keys: dict[str, tuple], *, what: str,
              convert: Callable | None = None, ignored=(), dtype=None) -> dict[tuple, np.ndarray]:
  """A Hugging Face state dict -> flat {param path: host array}, checked against a module's abstract params.

  shapes: flat {path: ShapeDtypeStruct}; keys: {state-dict key: path}. Paths no key reaches and keys the
  state lacks are "missing", state keys outside `keys` (and not `ignored`) "unexpected"; either is one
  ValueError naming the first few. `convert(path, w)` puts a tensor in Flax layout (default: `kernel`
  leaves through `kernel_to_flax`); a result of the wrong shape is a ValueError naming the key, its shape
  in the file and the shape the config implies in torch layout. Cast to `dtype` unless None.
  """
  reached = set(keys.values())
  missing = sorted(k for k in keys if k not in state) + sorted(".".join(p) for p in shapes if p not in reached)
  unexpected = sorted(k for k in state if k not in keys and k not in ignored)
  if missing or unexpected:
    raise ValueError(f"{what} state dict does not match its config: missing [{key_list(missing)}], "
                     f"unexpected [{key_list(unexpected)}]")
  params = {}
  for key, path in keys.items():
    src = np.asarray(state[key])
    if convert is not None:
      w = convert(path, src)
    else:
      w = kernel_to_flax(src) if path[-1] == "kernel" and src.ndim in (2, 4) else src
    want = tuple(shapes[path].shape)
    if w.shape != want:
      if path[-1] == "kernel" and len(want) in (2, 4):
        want = _torch_shape(want)
      raise ValueError(f"{key} has shape {tuple(src.shape)} in the weights but the config implies {want}; "
                       "the config does not match the checkpoint")
    params[path] = w if dtype is None else w.astype(dtype, copy=False)
  return params


def from_params(params, key_of: Callable[[tuple], str]) -> dict[str, np.ndarray]:
  """Inverse of `to_params` with the default conversion: a params pytree -> {key_of(path): C-ordered host
  array in torch layout}."""
  from flax import traverse_util
  out = {}
  for path, w in traverse_util.flatten_dict(params).items():
    w = np.asarray(w)
    if path[-1] == "kernel" and w.ndim in (2, 4):
      w = kernel_to_torch(w)
    out[key_of(path)] = np.array(w, order="C")  # (ascontiguousarray would make a 0-d leaf 1-d)
  return out
