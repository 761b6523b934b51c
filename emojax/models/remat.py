"""Rematerialisation policies for transformer blocks: what a block keeps from its forward pass for the
backward one. "none" keeps everything (no remat), "full" only the block's inputs (the backward re-runs the
whole block), "dots" every matmul output, "dots_no_batch" the matmuls without batch dimensions (weights x
activations; attention's batched dots are recomputed). Parameters are the same under every policy."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from emojax import parallel
from emojax.models import lora as lora_lib

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


def runs(kinds: list, scan: bool) -> list[tuple[int, int]]:
  """[start, end) of each stretch of equal consecutive kinds (one layer each without scan)."""
  out, i = [], 0
  while i < len(kinds):
    end = i + 1
    while scan and end < len(kinds) and kinds[end] == kinds[i]:
      end += 1
    out.append((i, end))
    i = end
  return out


def scan(layer: nn.Module, layer_params: list, layer_adapters: list, carry, call, remat: str = "none"):
  """carry through the unbound `layer` once per entry of layer_params as one lax.scan over the stacked params:
  call(layer, variables, carry) -> carry. LoRA adapters (lora.adapters_at of each layer, all alike or all None)
  are stacked too, each step's slice active inside it; XLA compiles the layer once. The carry is held sharded over
  the batch axes: without that, XLA:CPU's propagation through the loop replicated the activations on every device
  and all-reduced the dots (the sd35m update: f32[48,1024,6144] per device where the rows a device owns are 6)."""
  stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
  xs = (stack(_matmul_weights_in(layer_params, getattr(layer, "dtype", None))),
        None if layer_adapters[0] is None else stack(layer_adapters))

  def body(carry, x):
    params, adapters = x
    carry = jax.tree.map(parallel.constrain_batch, carry)
    with lora_lib.layer_scope(adapters):
      return jax.tree.map(parallel.constrain_batch, call(layer, {"params": params}, carry)), None

  if remat != "none":
    body = jax.checkpoint(body, policy=POLICIES[remat])
  return jax.lax.scan(body, carry, xs)[0]


def _matmul_weights_in(layer_params: list, dtype) -> list:
  """Kernels and embeddings cast to the layer's compute dtype before they are stacked, as nn.Dense would cast them
  inside the layer anyway (same numbers): the stack and its per-step slices are then half the bytes of f32 ones."""
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    return layer_params

  def narrow(path, x):
    name = str(getattr(path[-1], "key", ""))
    wider = jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits > jnp.finfo(dtype).bits
    return x.astype(dtype) if wider and name in ("kernel", "embedding") else x

  return [jax.tree_util.tree_map_with_path(narrow, p) for p in layer_params]
