"""What a generator GRPO job keeps on a device between its programs, for `emojax.plan`'s "device" row.

Each program's plan counts its own arguments. A device also holds, the whole time, the weights of the models the
other programs use: the policy's state and constants (rollout, update), the LVLM judge's weights (sharded over
the mesh with rewards.lvlm.mesh = "train", whole on the default device with "replicated"), and PickScore's
(device_put whole on the default device). The device's peak is the largest program plus everything resident that
the program does not already take as an argument. The SD3 pipeline's text encoders are not on it: their weights
stay in host memory (float32, as `sd3.SD3Pipeline` loads them) and each encode moves them layer by layer, so the
row reports their host bytes and their largest single weight, what an encode holds on the device at a time.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from emojax.models import clip as clip_lib
from emojax.models import t5 as t5_lib
from emojax.models import text_encoder as te

# transformers config.json fields of the public checkpoints, for planning without their directories
PICKSCORE_V1 = {  # yuvalkirstain/PickScore_v1: a CLIP ViT-H/14
    "projection_dim": 1024,
    "text_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                    "num_hidden_layers": 24, "vocab_size": 49408, "max_position_embeddings": 77,
                    "hidden_act": "gelu", "projection_dim": 1024},
    "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16,
                      "num_hidden_layers": 32, "patch_size": 14, "image_size": 224, "hidden_act": "gelu"},
}
SD35_TEXT_ENCODERS = {  # stabilityai/stable-diffusion-3.5-medium's text_encoder, text_encoder_2, text_encoder_3
    "text_encoder": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                     "num_hidden_layers": 12, "vocab_size": 49408, "max_position_embeddings": 77,
                     "hidden_act": "quick_gelu", "projection_dim": 768},
    "text_encoder_2": {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                       "num_hidden_layers": 32, "vocab_size": 49408, "max_position_embeddings": 77,
                       "hidden_act": "gelu", "projection_dim": 1280},
    "text_encoder_3": {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
                       "vocab_size": 32128, "feed_forward_proj": "gated-gelu"},
}


def _config_json(directory: str, fallback: dict) -> dict:
  path = os.path.join(directory or "", "config.json")
  if directory and os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  return fallback


def nbytes(tree, shardings=None) -> int:
  """Bytes of a tree of shapes: global, or per device under `shardings` (each leaf's shard)."""
  leaves = jax.tree.leaves(tree)
  if shardings is None:
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in leaves))
  return int(sum(np.prod(s.shard_shape(x.shape), dtype=np.int64) * np.dtype(x.dtype).itemsize
                 for x, s in zip(leaves, jax.tree.leaves(shardings))))


def pickscore_config(c) -> clip_lib.CLIPConfig:
  """rewards.pickscore.path's config; without one, the shipped tiny model for a tiny job (as the reward loads it),
  PickScore_v1's for an SD3 job (whose reward requires the path)."""
  path = c.rewards.pickscore.path
  if not path and c.model.kind != "sd3":
    from emojax.io import assets
    from emojax.rewards import clip_scores
    path = assets.asset_dir(clip_scores.SHIPPED_PREFERENCE)
  return clip_lib.CLIPConfig.from_hf_dict(_config_json(path, PICKSCORE_V1))


def pickscore_program(c, program) -> dict:
  """PickScore's image tower on one rewards.pickscore.batch_size batch, its float32 weights on the default device
  (as `clip_scores.ClipScorer` runs it); program(name, lower, args, parts, params) compiles and measures it."""
  config = pickscore_config(c)
  model = clip_lib.CLIP(config)
  params = clip_lib.param_shapes(config)
  v = config.vision
  pixels = jax.ShapeDtypeStruct((int(c.rewards.pickscore.batch_size), v.image_size, v.image_size, v.num_channels),
                                jnp.float32)
  fn = jax.jit(lambda p, px: model.apply({"params": p}, px, method=clip_lib.CLIP.image_embeds))
  parts = {"config_task": c.task, "params_bytes": nbytes(params), "lora_bytes": 0, "opt_state_bytes": 0,
           "constants_bytes": 0, "batch_bytes": nbytes(pixels)}
  return program("pickscore", fn.lower, (params, pixels), parts, params)


def text_encoders(pretrained: str) -> dict:
  """Host bytes (float32) and largest single weight of the SD3 pipeline's text encoders."""
  host, largest = {}, 0
  for name, fallback in SD35_TEXT_ENCODERS.items():
    d = _config_json(os.path.join(pretrained, name) if pretrained else "", fallback)
    shapes = (t5_lib.param_shapes(t5_lib.T5Config.from_hf_dict(d)) if name == "text_encoder_3"
              else te.param_shapes(te.TextEncoderConfig.from_hf_dict(d)))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), shapes)
    host[name] = nbytes(shapes)
    largest = max(largest, max(nbytes(x) for x in jax.tree.leaves(shapes)))
  return {"host_bytes": host, "largest_weight_bytes": largest}


def device_row(rows: list[dict], target: dict, text: dict | None) -> dict:
  """The default device's peak over the planned programs: each program's total plus the resident weights it does
  not take as arguments (the policy's state and constants, the judge's and PickScore's weights)."""
  by = {r["program"]: r for r in rows}
  policy = by["update"]
  resident = {"policy": policy["params_bytes"] + policy["lora_bytes"] + policy["opt_state_bytes"]
                        + policy["constants_bytes"]}
  for name in ("judge", "pickscore"):
    if name in by:
      resident[name] = by[name]["params_bytes"]
  own = {"rollout": "policy", "update": "policy", "judge": "judge", "pickscore": "pickscore"}
  transient = text["largest_weight_bytes"] if text else 0
  peaks = {}
  for r in rows:
    others = sum(b for k, b in resident.items() if k != own[r["program"]])
    peaks[r["program"]] = r["total_bytes"] + others
  if text:  # an encode holds one text-encoder weight beside everything resident
    peaks["text_encode"] = sum(resident.values()) + transient
  worst = max(peaks, key=peaks.get)
  return {"program": "device", "config_task": policy["config_task"], "mesh": policy.get("mesh"),
          "resident_bytes": resident, "peak_bytes_by_program": peaks, "peak_program": worst,
          "total_bytes": int(peaks[worst]), "total_gib": round(peaks[worst] / 2**30, 3),
          "device_memory_bytes": target["device_memory"], "fits": bool(peaks[worst] <= target["device_memory"]),
          "bf16_native": target["bf16_native"],
          "text_encoders_host_bytes": (text or {}).get("host_bytes", {}), "text_encode_device_bytes": transient}
