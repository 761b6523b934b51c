"""emojax.models.dense: bf16 Dense matmuls accumulated in f32 give the plain path's numbers, and every dot of their
forward and backward takes bf16 operands (the dots XLA:CPU runs on bf16 units instead of upcasting)."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from emojax.models import dense, mmdit

BF16 = jnp.bfloat16


def _operands():
  x = jax.random.normal(jax.random.key(0), (2, 37, 64)).astype(BF16)
  w = jax.random.normal(jax.random.key(1), (64, 48)).astype(BF16)
  g = jax.random.normal(jax.random.key(2), (2, 37, 48))
  return x, w, g


def test_matmul_equals_the_plain_bf16_dot_and_its_gradients():
  x, w, g = _operands()
  loss = lambda mm: lambda x, w: jnp.sum(mm(x, w).astype(jnp.float32) * g)
  (v0, (dx0, dw0)) = jax.jit(jax.value_and_grad(loss(jnp.matmul), (0, 1)))(x, w)
  (v1, (dx1, dw1)) = jax.jit(jax.value_and_grad(loss(dense.matmul), (0, 1)))(x, w)
  np.testing.assert_array_equal(np.asarray(dense.matmul(x, w), np.float32), np.asarray(x @ w, np.float32))
  assert dx1.dtype == dw1.dtype == BF16
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
  for a, b in ((dx1, dx0), (dw1, dw0)):  # both round an f32 sum to bf16; the order of the sum may differ
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, atol=2 ** -7 * np.abs(b).max())


def test_every_dot_of_a_bf16_dense_step_takes_bf16_operands():
  x, w, g = _operands()
  layer = dense.Dense(48, dtype=BF16, param_dtype=jnp.float32, name="d")
  params = layer.init(jax.random.key(3), x)
  loss = lambda p, x: jnp.sum(layer.apply(p, x).astype(jnp.float32) * g)
  text = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(params, x).as_text()
  dots = re.findall(r"stablehlo.dot_general.*", text)
  assert len(dots) == 3, dots  # forward, input gradient, weight gradient
  for d in dots:
    operands, result = d.rsplit("->", 1)
    assert "f32" not in operands.split(":")[-1] and "f32" in result, d

  xf = x.astype(jnp.float32)
  ours = dense.Dense(48, dtype=jnp.float32, param_dtype=jnp.float32, name="d").apply(params, xf)
  theirs = nn.Dense(48, name="d").apply(params, xf)  # in f32 the plain program
  np.testing.assert_array_equal(ours, theirs)


def test_mmdit_uses_it():
  cfg = mmdit.PRESETS["tiny"]
  model = mmdit.MMDiT(cfg, dtype=BF16)
  x = jnp.zeros((1, cfg.sample_size, cfg.sample_size, cfg.in_channels), BF16)
  ctx = jnp.zeros((1, 4, cfg.joint_attention_dim), BF16)
  pooled = jnp.zeros((1, cfg.pooled_projection_dim), BF16)
  params = jax.eval_shape(model.init, jax.random.key(0), x, ctx, pooled, jnp.zeros((1,)))
  text = jax.jit(lambda p: model.apply(p, x, ctx, pooled, jnp.zeros((1,)))).lower(params).as_text()
  dots = re.findall(r"stablehlo.dot_general.*", text)
  weight_dots = [d for d in dots if "bf16" in d.rsplit("->", 1)[0] and "f32" in d.rsplit("->", 1)[1]]
  assert len(weight_dots) >= cfg.num_layers * 6, len(weight_dots)  # q, k, v, out and both MLP matmuls a block
