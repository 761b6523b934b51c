"""Hugging Face weight files: reading one safetensors file or an index of shards, and writing a
model directory (config.json + <stem>.safetensors) that diffusers / transformers load."""
from __future__ import annotations

import json
import os

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
