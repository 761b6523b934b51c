"""Rematerialisation policies for transformer blocks: what a block keeps from its forward pass for the
backward one. "none" keeps everything (no remat), "full" only the block's inputs (the backward re-runs the
whole block), "dots" every matmul output, "dots_no_batch" the matmuls without batch dimensions (weights x
activations; attention's batched dots are recomputed). Parameters are the same under every policy."""
from __future__ import annotations

import flax.linen as nn
import jax

POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
NAMES = ("none", *POLICIES)


def block(block_cls, remat: str):
  """block_cls, or its rematerialised version under a POLICIES policy."""
  if remat == "none":
    return block_cls
  if remat not in POLICIES:
    raise ValueError(f"remat {remat!r} unknown; use one of {list(NAMES)}")
  return nn.remat(block_cls, policy=POLICIES[remat])
