"""MMDiT parity with diffusers' SD3Transformer2DModel (goldens from tools/make_goldens_mmdit.py) and weight import."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from emojax.models import mmdit
from conftest import GOLDENS, read_golden

NAMES = ("plain", "dual_qknorm")


INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")


@functools.cache
def forward(module):
  return jax.jit(lambda params, *inputs: module.apply({"params": params}, *inputs))


def max_error(module, params, g):
  out = forward(module)(params, *(g.arrays[k] for k in INPUTS))
  return float(np.abs(np.asarray(out) - g.arrays["output"]).max())


@pytest.mark.parametrize("name", NAMES)
def test_matches_diffusers(name):
  g = read_golden(f"mmdit_{name}")
  config = mmdit.MMDiTConfig.from_dict(g.config)
  params = mmdit.load_diffusers_params(g.weights, config)
  err = max_error(mmdit.MMDiT(config), params, g)
  print(f"{name}: max abs error {err:.2e}")
  assert err <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
  g = read_golden(f"mmdit_{name}")
  config, state = mmdit.MMDiTConfig.from_dict(g.config), g.weights
  back = mmdit.to_diffusers_state_dict(mmdit.load_diffusers_params(state, config))
  assert back.keys() == state.keys()
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  # The table our init writes is diffusers' own init formula.
  np.testing.assert_allclose(mmdit.sincos_pos_embed_table(config), state["pos_embed.pos_embed"], atol=1e-5)


def write_pretrained(directory, config, state, shards=1):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config))
  if shards == 1:
    save_file(state, str(directory / "diffusion_pytorch_model.safetensors"))
    return
  keys, weight_map = sorted(state), {}
  for i in range(shards):
    file = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = {k: state[k] for k in keys[i::shards]}
    save_file(part, str(directory / file))
    weight_map.update(dict.fromkeys(part, file))
  index = {"metadata": {}, "weight_map": weight_map}
  (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("shards", [1, 2])
def test_from_pretrained(tmp_path, shards):
  g = read_golden("mmdit_dual_qknorm")
  write_pretrained(tmp_path / "transformer", g.config, g.weights, shards)
  module, params = mmdit.MMDiT.from_pretrained(tmp_path / "transformer")
  assert module.config == mmdit.MMDiTConfig(**{k: v for k, v in g.config.items() if k[0] != "_"})
  assert max_error(module, params, g) <= 1e-4


def test_from_pretrained_bf16(tmp_path):
  g = read_golden("mmdit_plain")
  write_pretrained(tmp_path, g.config, {k: v.astype(jnp.bfloat16) for k, v in g.weights.items()})
  module, params = mmdit.from_pretrained(tmp_path, dtype=jnp.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  assert max_error(module, params, g) <= 0.1  # bf16 weights and compute


def test_unknown_config_key():
  with pytest.raises(ValueError, match="num_blocks"):
    mmdit.MMDiTConfig.from_dict({"_class_name": "SD3Transformer2DModel", "num_layers": 2, "num_blocks": 2})


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    mmdit.from_pretrained(tmp_path / "nowhere")
  (tmp_path / "config.json").write_text(json.dumps(read_golden("mmdit_plain").config))
  with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
    mmdit.from_pretrained(tmp_path)


def test_config_weight_mismatch(tmp_path):
  config, state = read_golden("mmdit_plain")[:2]
  write_pretrained(tmp_path, dict(config, joint_attention_dim=48), state)
  with pytest.raises(ValueError, match=r"context_embedder\.weight"):
    mmdit.from_pretrained(tmp_path)
  config = mmdit.MMDiTConfig.from_dict(config)
  with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn2"):
    mmdit.load_diffusers_params(state, dataclasses.replace(config, dual_attention_layers=(0,)))


def test_sd35m_parameter_count():
  want = json.loads((GOLDENS / "mmdit_sd35m.json").read_text())
  assert mmdit.PRESETS["sd35m"] == mmdit.MMDiTConfig.from_dict(want["config"])
  count = sum(x.size for x in jax.tree.leaves(mmdit.param_shapes(mmdit.PRESETS["sd35m"])))
  assert count == want["num_state_dict_elements"]  # diffusers' parameters + the pos_embed buffer
  assert want["num_parameters"] == 2_243_171_520


def test_tiny_forward_rows_are_independent_and_read_every_input():
  """The pixel-space tiny preset (patch 4): each sample's output is its own (batched = one at a time, to
  float rounding) and depends on its noise, timestep, context and pooled vector."""
  config = mmdit.PRESETS["tiny"]
  module = mmdit.MMDiT(config)
  # Random params from the abstract tree: module.init compiles for ~20 s on a 2-core CPU.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype), mmdit.param_shapes(config))
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  ctx = jax.random.normal(jax.random.key(2), (2, 7, config.joint_attention_dim))
  pooled = jax.random.normal(jax.random.key(3), (2, config.pooled_projection_dim))
  t = jnp.array([900.0, 10.0])
  f = forward(module)
  out = np.asarray(f(params, x, ctx, pooled, t))
  assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all()
  alone = np.asarray(f(params, x[1:], ctx[1:], pooled[1:], t[1:]))
  np.testing.assert_allclose(out[1:], alone, atol=1e-5)
  for i, changed in enumerate([(x[::-1], ctx, pooled, t), (x, ctx[::-1], pooled, t), (x, ctx, pooled[::-1], t),
                               (x, ctx, pooled, t[::-1])]):
    assert np.abs(np.asarray(f(params, *changed)) - out).max() > 1e-3, f"input {i} is ignored"




def _same_loss_and_grads(plain, variant, params, inputs, rtol=1e-6, grad_atol=1e-7):
  """jit(value_and_grad) of mean(out²) through both modules: equal up to the re-run forward's rounding."""
  def loss(module):
    return jax.jit(jax.value_and_grad(lambda p: jnp.mean(module.apply({"params": p}, *inputs) ** 2)))

  (l0, g0), (l1, g1) = loss(plain)(params), loss(variant)(params)
  assert float(l0) > 0
  np.testing.assert_allclose(l1, l0, rtol=rtol)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=grad_atol), g1, g0)


def test_remat_keeps_params_outputs_and_gradients(remat="dots_no_batch"):
  """A rematerialised MMDiT has the same parameter tree and computes the same loss and gradients (the
  backward recomputes instead of storing; only rounding of the re-run forward may differ)."""
  g = read_golden("mmdit_dual_qknorm")
  state, (x, ctx, pooled, t) = g.weights, (g.arrays[k] for k in INPUTS)
  config = mmdit.MMDiTConfig.from_dict(g.config)
  plain, rem = mmdit.MMDiT(config), mmdit.MMDiT(config, remat=remat)
  params = mmdit.load_diffusers_params(state, config)
  shapes = lambda m: jax.tree.map(lambda a: a.shape, jax.eval_shape(m.init, jax.random.key(0), x, ctx, pooled, t))
  assert shapes(rem) == shapes(plain)
  _same_loss_and_grads(plain, rem, params, (x, ctx, pooled, t))
  with pytest.raises(ValueError, match="remat 'some' unknown"):
    mmdit.MMDiT(config, remat="some").init(jax.random.key(0), x, ctx, pooled, t)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_layers_computes_the_loop_and_its_gradients(remat):
  """scan_layers: the identical middle blocks of a 5-layer MMDiT (block 0 dual-attention and block 4
  context-pre-only stay unrolled) run as one lax.scan over their stacked per-layer params: same params tree,
  same output and gradients as the loop, and the compiled program holds one copy of the scanned block."""
  config = dataclasses.replace(mmdit.PRESETS["tiny"], num_layers=5, dual_attention_layers=(0,))
  x, ctx, pooled, t = mmdit.dummy_inputs(config, batch_size=2, context_len=3)
  keys = jax.random.split(jax.random.key(1), 4)
  x, ctx, pooled = (jax.random.normal(k, a.shape) for k, a in zip(keys, (x, ctx, pooled)))
  t = jnp.array([250.0, 900.0])
  loop, scan = mmdit.MMDiT(config, remat=remat), mmdit.MMDiT(config, remat=remat, scan_layers=True)
  params = jax.jit(loop.init)(jax.random.key(0), x, ctx, pooled, t)["params"]
  # zero-initialised modulations would make every block the identity: give them weights
  params = jax.tree.map(lambda a, k: a + 0.05 * jax.random.normal(k, a.shape),
                        params, jax.tree.unflatten(jax.tree.structure(params),
                                                   list(jax.random.split(keys[3], len(jax.tree.leaves(params))))))
  assert jax.tree.structure(jax.eval_shape(scan.init, jax.random.key(0), x, ctx, pooled, t)["params"]) == \
      jax.tree.structure(params)
  _same_loss_and_grads(loop, scan, params, (x, ctx, pooled, t), rtol=1e-5, grad_atol=1e-6)
  hlo = jax.jit(lambda p: scan.apply({"params": p}, x, ctx, pooled, t)).lower(params).as_text()
  assert "while" in hlo or "scan" in hlo
