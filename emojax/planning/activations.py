"""The SD3 generator update's activation memory by arithmetic, for `emojax.plan` to print beside XLA's figures.

Per device, for one micro-batch of the update (rl.grad_accum splits the batch; CFG doubles the rows; the batch
axes of the mesh split the rows):
  stored   what the backward keeps. Under model.remat = "full" a joint block keeps only its input, the image
           and text streams (rows, image + text tokens, width), in the compute dtype, for every block; the
           timestep scan keeps that for every trained timestep, or for one with rl.remat_timesteps.
  attention one block's attention probabilities (rows, heads, T, T) in float32 ("xla"), or with "blockwise"
           one key chunk's (rows, heads, T, chunk): the largest transient of a block's forward or backward.
Other remat policies keep a block's internals too; they are not modelled (stored is then None).
"""
from __future__ import annotations

import numpy as np

from emojax.models import attention as attention_lib

def sd3_update(config, policy, mesh_shape: dict) -> dict:
  r, m = config.rl, config.model
  tc = policy.transformer.config
  rows = r.prompts_per_step * r.group_size // r.grad_accum
  rows = rows * (2 if r.cfg_scale != 1.0 else 1) // max(1, mesh_shape["data"] * mesh_shape["fsdp"])
  side = policy.image_size // policy.pipe.vae_scale_factor // tc.patch_size
  image, text = side * side, policy.pipe.context_length(m.max_sequence_length) + m.emotion_tokens
  tokens, width, itemsize = image + text, tc.num_attention_heads * tc.attention_head_dim, np.dtype(m.dtype).itemsize
  timesteps = 1 if r.remat_timesteps else max(1, int(round(r.timestep_fraction * (r.sde_steps or r.num_steps))))
  stored = rows * tokens * width * itemsize * tc.num_layers * timesteps if m.remat == "full" else None
  impl = m.attention
  if impl == "auto":
    impl = "xla" if tokens * tokens < attention_lib.AUTO_MIN_TOKENS["cpu"] ** 2 else "blockwise"
  keys = tokens if impl == "xla" else min(attention_lib.CHUNK, tokens)
  heads = tc.num_attention_heads // max(1, mesh_shape["tensor"])
  return {"analytic_rows_per_device": rows, "analytic_tokens": tokens, "analytic_stored_activation_bytes": stored,
          "analytic_attention_impl": impl, "analytic_attention_bytes": rows * heads * tokens * keys * 4}
