"""LoRA against diffusers / PEFT (tests/goldens/sd3_lora*, from tools/make_goldens_lora.py, which also checks
that diffusers' load_lora_weights reads a file emojax wrote): the adapted forward, LoRA off = the base
model, merging, the file layout, fresh adapters, targets, dropout and gradients."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from emojax.models import lora as lora_lib
from emojax.models import mmdit
from conftest import GOLDENS, read_golden

FILE = str(GOLDENS / "sd3_lora" / "pytorch_lora_weights.safetensors")
FLOW_GRPO_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


@functools.cache
def setup():
  model, params = mmdit.from_pretrained(GOLDENS / "sd3_pipeline" / "transformer")
  g = read_golden("sd3_lora").arrays
  x = (np.transpose(g["hidden_states"], (0, 2, 3, 1)), g["encoder_hidden_states"], g["pooled_projections"], g["timestep"])
  return model, params, g, x


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apply(model, params, x, lora, config, rng):
  if lora is None:
    return model.apply({"params": params}, *x)
  with lora_lib.enabled(lora, config, rng):  # interception happens while this traces
    return model.apply({"params": params}, *x)


def forward(model, params, x, lora=None, config=None, rng=None):
  return np.transpose(np.asarray(_apply(model, params, x, lora, config, rng)), (0, 3, 1, 2))


def test_diffusers_lora_file_gives_diffusers_output_and_off_is_the_base():
  model, params, g, x = setup()
  adapters, config = lora_lib.load(FILE, params)
  assert (config.rank, config.alpha, set(config.target_modules)) == (4, 8.0, set(FLOW_GRPO_TARGETS))
  np.testing.assert_allclose(forward(model, params, x, adapters, config), g["with_lora"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(forward(model, params, x), g["base"], atol=1e-4, rtol=0)  # the KL reference
  assert np.abs(g["with_lora"] - g["base"]).max() > 0.1


def test_merge_equals_the_adapted_forward():
  model, params, g, x = setup()
  adapters, config = lora_lib.load(FILE, params)
  merged = lora_lib.merge(params, adapters, config)
  np.testing.assert_allclose(forward(model, merged, x), forward(model, params, x, adapters, config), atol=1e-5)


def test_saved_file_is_diffusers_layout(tmp_path):
  _, params, _, _ = setup()
  adapters, config = lora_lib.load(FILE, params)
  path = str(tmp_path / "pytorch_lora_weights.safetensors")
  lora_lib.save(path, adapters, config)
  with safe_open(FILE, framework="np") as ref, safe_open(path, framework="np") as ours:
    assert sorted(ref.keys()) == sorted(ours.keys()) and len(ref.keys()) == 38
    for k in ref.keys():
      np.testing.assert_array_equal(ours.get_tensor(k), ref.get_tensor(k))
    meta = json.loads(ours.metadata()[lora_lib.METADATA_KEY])
  assert (meta["transformer.r"], meta["transformer.lora_alpha"]) == (4, 8.0)


def test_fresh_adapters_start_unchanged_and_train_only_themselves():
  model, params, _, x = setup()
  config = lora_lib.LoRAConfig(rank=2, alpha=4.0, target_modules=FLOW_GRPO_TARGETS)
  adapters = lora_lib.init(params, config, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(forward(model, params, x, adapters, config), forward(model, params, x))

  def loss(a):
    with lora_lib.enabled(a, config):
      return jnp.mean(model.apply({"params": params}, *x) ** 2)

  grads = jax.jit(jax.grad(loss))(adapters)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert all(float(jnp.abs(g).max()) == 0 for p, g in flat if "lora_A" in str(p[-1]))  # B = 0: no A gradient yet
  zero_b = {jax.tree_util.keystr(p[:-1]) for p, g in flat if "lora_B" in str(p[-1]) and float(jnp.abs(g).max()) == 0}
  # the last block's context queries only update the context it discards: no gradient, as in diffusers
  assert zero_b == {"['transformer_blocks_1']['attn']['add_q_proj']"}


def test_targets_regex_and_no_match():
  _, params, _, _ = setup()
  paths = lora_lib.target_paths(params, lora_lib.LoRAConfig(target_modules=r"transformer_blocks\.0\.attn\.to_q"))
  assert paths == [("transformer_blocks_0", "attn", "to_q")]
  with pytest.raises(ValueError, match="match no Dense layer"):
    lora_lib.target_paths(params, lora_lib.LoRAConfig(target_modules=("q_proj",)))
  with pytest.raises(ValueError, match="need rank >= 1"):
    lora_lib.LoRAConfig(rank=0)


def test_dropout_acts_only_with_an_rng():
  model, params, _, x = setup()
  adapters, config = lora_lib.load(FILE, params)
  config = lora_lib.LoRAConfig(config.rank, config.alpha, 0.5, config.target_modules)
  plain = forward(model, params, x, adapters, config)
  np.testing.assert_array_equal(forward(model, params, x, adapters, config, rng=None), plain)
  dropped = forward(model, params, x, adapters, config, rng=jax.random.PRNGKey(1))
  assert np.abs(dropped - plain).max() > 1e-3


def _random_mmdit(num_layers=6):
  """A 6-layer MMDiT (block 0 dual-attention, 1-4 alike, 5 context-pre-only) with non-trivial modulations."""
  import dataclasses
  config = dataclasses.replace(mmdit.PRESETS["tiny"], num_layers=num_layers, dual_attention_layers=(0,))
  x = mmdit.dummy_inputs(config, batch_size=2, context_len=3)
  keys = jax.random.split(jax.random.key(1), 4)
  x = (*(jax.random.normal(k, a.shape) for k, a in zip(keys, x[:3])), jnp.array([250.0, 900.0]))
  params = jax.jit(mmdit.MMDiT(config).init)(jax.random.key(0), *x)["params"]
  leaves = jax.random.split(keys[3], len(jax.tree.leaves(params)))
  params = jax.tree.map(lambda a, k: a + 0.05 * jax.random.normal(k, a.shape), params,
                        jax.tree.unflatten(jax.tree.structure(params), list(leaves)))
  return config, params, x


def test_scanned_blocks_with_adapters_equal_the_loop():
  """scan_layers with LoRA: adapters are stacked and applied inside the scan, and blocks whose adapters differ scan
  apart (here 1-2 adapted, 3-4 not, under an active LoRA context): output, adapter and base gradients equal the
  unrolled model's; with dropout and an rng the dropped inputs are the same too."""
  targets = r"transformer_blocks\.[12]\.attn\.(to_q|to_v|to_out\.0)"
  config, params, x = _random_mmdit()
  lora_config = lora_lib.LoRAConfig(rank=2, alpha=4.0, target_modules=targets)
  adapters = lora_lib.init(params, lora_config, jax.random.key(2))
  adapters = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), adapters)  # B != 0

  def loss(module, lora_config, rng=None, grad=True):
    def f(p, a):
      with lora_lib.enabled(a, lora_config, rng):
        return jnp.mean(module.apply({"params": p}, *x) ** 2)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)) if grad else f)(params, adapters)

  loop, scan = mmdit.MMDiT(config), mmdit.MMDiT(config, scan_layers=True)
  (l0, g0), (l1, g1) = loss(loop, lora_config), loss(scan, lora_config)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)
  assert float(jnp.abs(g0[1]["transformer_blocks_2"]["attn"]["to_q"]["lora_A"]).max()) > 0
  dropping = lora_lib.LoRAConfig(rank=2, alpha=4.0, dropout=0.5, target_modules=targets)
  d0, d1 = (loss(m, dropping, jax.random.key(4), grad=False) for m in (loop, scan))
  np.testing.assert_allclose(d1, d0, rtol=1e-6)
  assert abs(float(d0) - float(l0)) > 1e-6 * abs(float(l0))  # dropout did act
  hlo = jax.jit(lambda p, a: _scan_apply(scan, p, a, lora_config, x)).lower(params, adapters).as_text()
  assert hlo.count("stablehlo.while") == 2


def _scan_apply(module, params, adapters, lora_config, x):
  with lora_lib.enabled(adapters, lora_config):
    return module.apply({"params": params}, *x)
