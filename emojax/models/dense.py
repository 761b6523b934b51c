"""Dense layers whose 16-bit matmuls accumulate in float32, in the forward and in both backward matmuls.

flax's Dense(dtype=bf16) emits a bf16 x bf16 -> bf16 dot. XLA:CPU has no such kernel: it converts both operands to
f32 and runs an f32 matmul (bench/mmdit_train.py: 120 of an MMDiT step's 123 dots, about 4x slower than diffusers
under autocast), whereas a bf16 x bf16 -> f32 dot runs on the CPU's bf16 units (AVX512-BF16 / AMX), as it does on
TPU and GPU. `dot_general` asks for that dot and rounds its result to bf16; the numbers are those of the plain
path (bf16 operands are exact in f32, whose sums the plain path rounds the same way), up to summation order. Its
VJP keeps the cotangent in bf16 so the two backward dots are also bf16 x bf16 -> f32, the weight gradient
contracting every leading (batch, token) dimension at once, the layout XLA:CPU's fast kernels take.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

F32 = jnp.float32


@jax.custom_vjp
def matmul(x, w):
  """x (..., K) @ w (K, N), accumulated in f32, in x's dtype."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=F32).astype(x.dtype)


def _matmul_fwd(x, w):
  return matmul(x, w), (x, w)


def _matmul_bwd(res, g):
  x, w = res
  g = g.astype(x.dtype)
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), preferred_element_type=F32)
  lead = tuple(range(x.ndim - 1))
  dw = jax.lax.dot_general(x, g, ((lead, lead), ((), ())), preferred_element_type=F32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """Dense's dot: `matmul` for 16-bit float operands of one dtype, else lax.dot_general as flax calls it."""
  dense_like = rhs.ndim == 2 and dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ()))
  if dense_like and lhs.dtype == rhs.dtype and lhs.dtype in (jnp.bfloat16, jnp.float16) and precision is None:
    return matmul(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)


def Dense(features: int, *, dtype, param_dtype, name: str, **kw) -> nn.Dense:  # noqa: N802 (a module factory)
  """nn.Dense with `dot_general`: the same parameters and, in f32, the same program."""
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name, dot_general=dot_general, **kw)
