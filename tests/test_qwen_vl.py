"""Qwen2.5-VL parity with transformers' Qwen2_5_VLForConditionalGeneration (goldens from
tools/make_goldens_qwen_vl.py), M-RoPE positions, KV-cache decoding, weight import and presets."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from emojax.io import tokenizers
from emojax.models import qwen_vl as qv
from conftest import read_golden

NAMES = ("tied", "untied")


@functools.cache
def forward(config, grid):
  return jax.jit(lambda p, ids, mask, pixels: qv.QwenVL(config).apply({"params": p}, ids, mask, pixels, grid))


@functools.cache
def loaded(name):
  d, state, z = read_golden(f"qwen_vl_{name}")
  config = qv.QwenVLConfig.from_hf_dict(d)
  return config, qv.load_hf_qwen_vl_params(state, config), z


def logits_error(config, params, z):
  out = forward(config, qv.static_grid(z["image_grid_thw"]))(params, z["input_ids"], z["attention_mask"],
                                                             z["pixel_values"])
  real = z["attention_mask"].astype(bool)  # padded query rows are fully masked: their output is arbitrary
  return float(np.abs(np.asarray(out) - z["logits"])[real].max())


@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers(name):
  config, params, z = loaded(name)
  assert config.tie_word_embeddings == (name == "tied") and ("lm_head" in params) == (name == "untied")
  err = logits_error(config, params, z)
  print(f"{name}: logits max abs error {err:.2e}")
  assert err <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_rope_index_matches_transformers(name):
  config, _, z = loaded(name)
  grid = qv.static_grid(z["image_grid_thw"])
  pos, deltas = jax.jit(functools.partial(qv.rope_index, config, image_grid_thw=grid))(
    z["input_ids"], z["attention_mask"])
  np.testing.assert_array_equal(pos, z["position_ids"])
  np.testing.assert_array_equal(deltas, z["rope_deltas"])


def test_window_attention_matters():
  # The tied golden's 3x5 merged grid makes windows of 4, 2 and 1 tokens: attending over the whole
  # image in every block must not reproduce transformers.
  config, params, z = loaded("tied")
  vc = dataclasses.replace(config.vision_config, fullatt_block_indexes=tuple(range(config.vision_config.depth)))
  assert logits_error(dataclasses.replace(config, vision_config=vc), params, z) > 1e-3
  plan = qv.vision_plan(qv.static_grid(z["image_grid_thw"]), config.vision_config)
  assert sorted(np.bincount(plan["window_seg"]) // 4) == [1, 2, 2, 2, 4, 4]
  np.testing.assert_array_equal(plan["window_index"][plan["reverse"]], np.arange(15))


@functools.cache
def decode_fn(config):
  return jax.jit(lambda p, x, pos, mask, cache, i: qv.QwenVL(config).apply(
    {"params": p}, x, pos, mask, cache, i, method=qv.QwenVL.decode))


def test_kv_cache_decode_matches_full_forward():
  config, params, z = loaded("untied")
  grid = qv.static_grid(z["image_grid_thw"])
  ids, mask, pixels = z["input_ids"], z["attention_mask"], z["pixel_values"]
  b, n = ids.shape
  new = np.array([[7], [42]], np.int32)  # one generated token per row
  ids_ext, mask_ext = np.concatenate([ids, new], 1), np.pad(mask, ((0, 0), (0, 1)), constant_values=1)
  want = forward(config, grid)(params, ids_ext, mask_ext, pixels)

  embed = jax.jit(lambda p, ids: qv.QwenVL(config).apply({"params": p}, ids, pixels, grid, method=qv.QwenVL.embed))
  embeds = embed(params, ids_ext)
  pos, deltas = jax.jit(functools.partial(qv.rope_index, config, image_grid_thw=grid))(ids, mask)
  max_len = n + 4
  cache_mask = np.pad(mask_ext, ((0, 0), (0, max_len - n - 1)))
  cache = qv.init_cache(config, b, max_len)
  step = decode_fn(config)
  prefill, cache = step(params, embeds[:, :n], pos, cache_mask, cache, jnp.int32(0))
  real = mask.astype(bool)
  assert float(np.abs(np.asarray(prefill) - np.asarray(want[:, :n]))[real].max()) <= 1e-5
  # the new token's positions from rope_deltas, as transformers decodes
  new_pos = qv.text_position_ids(mask_ext, deltas)[:, :, n:]
  np.testing.assert_array_equal(new_pos, jax.jit(functools.partial(qv.rope_index, config, image_grid_thw=grid))(
    ids_ext, mask_ext)[0][:, :, n:])
  last, cache = step(params, embeds[:, n:], new_pos, cache_mask, cache, jnp.int32(n))
  err = float(np.abs(np.asarray(last[:, 0]) - np.asarray(want[:, n])).max())
  print(f"cached decode vs full forward: max abs error {err:.2e}")
  assert err <= 1e-5 and len(cache) == config.num_hidden_layers
  assert all(c["k"].shape == (b, max_len, config.num_key_value_heads, config.head_dim) for c in cache)
  assert not any(np.asarray(c[kv][:, n + 1:]).any() for c in cache for kv in "kv")  # slots past the written ones untouched


def write_pretrained(directory, d, state, shards=1):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(d))
  if shards == 1:
    save_file(state, str(directory / "model.safetensors"))
    return
  keys = sorted(state)
  weight_map = {}
  for i in range(shards):
    fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = keys[i::shards]
    save_file({k: state[k] for k in part}, str(directory / fname))
    weight_map.update({k: fname for k in part})
  (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def legacy_names(state):  # Qwen/Qwen2.5-VL-7B-Instruct's layout: visual.*, model.layers.*
  rename = lambda k: k.replace("model.visual.", "visual.").replace("model.language_model.", "model.")
  return {rename(k): v for k, v in state.items()}


def test_from_pretrained(tmp_path):
  d, state, _ = read_golden("qwen_vl_untied")
  config, _, z = loaded("untied")
  write_pretrained(tmp_path / "v5", d, state)
  module, params = qv.QwenVL.from_pretrained(tmp_path / "v5")
  assert module.config == config
  assert logits_error(module.config, params, z) <= 1e-4
  write_pretrained(tmp_path / "legacy", d, legacy_names(state), shards=3)
  module, params = qv.from_pretrained(tmp_path / "legacy")
  assert logits_error(module.config, params, z) <= 1e-4
  # tied: a state dict that still carries the lm_head copy loads too
  d, state, _ = read_golden("qwen_vl_tied")
  config, _, z = loaded("tied")
  full = dict(state, **{"lm_head.weight": state["model.language_model.embed_tokens.weight"]})
  assert logits_error(config, qv.load_hf_qwen_vl_params(full, config), z) <= 1e-4


def test_load_errors(tmp_path):
  d, state, _ = read_golden("qwen_vl_untied")
  config, _, _ = loaded("untied")
  with pytest.raises(FileNotFoundError, match="nowhere.*not found"):
    qv.from_pretrained(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    qv.from_pretrained(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(d))
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    qv.from_pretrained(tmp_path)
  write_pretrained(tmp_path / "sharded", d, state, shards=2)
  (tmp_path / "sharded" / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors is listed"):
    qv.from_pretrained(tmp_path / "sharded")
  # a checkpoint whose tensors disagree with its config.json
  write_pretrained(tmp_path / "bad", dict(d, text_config=dict(d["text_config"], intermediate_size=80)), state)
  with pytest.raises(ValueError, match=r"model.language_model.layers.0.mlp.down_proj.weight has shape \(64, 96\) "
                                       r"in the weights but the config implies \(64, 80\)"):
    qv.from_pretrained(tmp_path / "bad")
  bad = {k: v for k, v in state.items() if k != "lm_head.weight"}
  bad["model.visual.blocks.7.attn.qkv.weight"] = np.zeros(1)
  with pytest.raises(ValueError, match=r"missing \[lm_head.weight\].*unexpected \[model.visual.blocks.7.attn.qkv"):
    qv.load_hf_qwen_vl_params(bad, config)
  with pytest.raises(ValueError, match="Conv3d|patch_embed.proj.weight has shape"):
    vc = dataclasses.replace(config.vision_config, patch_size=2, window_size=8)
    qv.load_hf_qwen_vl_params(state, dataclasses.replace(config, vision_config=vc))


# Qwen/Qwen2.5-VL-7B-Instruct's config.json (flat text fields, Qwen2-VL-era vision keys).
HUB_7B = {
  "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
  "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
  "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
  "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
  "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
  "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
  "use_sliding_window": False,
  "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                    "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                    "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                    "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064,
}


def test_config_dicts():
  assert qv.QwenVLConfig.from_hf_dict(HUB_7B) == qv.PRESETS["qwen25vl_7b"]
  for preset in qv.PRESETS.values():
    assert qv.QwenVLConfig.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset
  with pytest.raises(ValueError, match=r"unknown QwenVLConfig fields \['hiden_size'\]"):
    qv.QwenVLConfig.from_hf_dict(dict(HUB_7B, hiden_size=8))
  with pytest.raises(ValueError, match=r"unknown VisionConfig fields \['embed_dim'\]"):  # a Qwen2-VL config
    qv.QwenVLConfig.from_hf_dict(dict(HUB_7B, vision_config=dict(HUB_7B["vision_config"], embed_dim=1280)))
  with pytest.raises(ValueError, match="sliding-window"):
    qv.QwenVLConfig.from_hf_dict(dict(HUB_7B, use_sliding_window=True))
  with pytest.raises(ValueError, match="rope scaling"):
    qv.QwenVLConfig.from_hf_dict(dict(HUB_7B, rope_scaling={"type": "yarn", "factor": 4.0}))
  with pytest.raises(ValueError, match="mrope_section"):
    dataclasses.replace(qv.PRESETS["tiny"], mrope_section=(4, 4, 4))


def test_7b_parameter_count():
  c = qv.PRESETS["qwen25vl_7b"]
  shapes = qv.param_shapes(c)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  h, kv, v, i = c.hidden_size, c.num_key_value_heads * c.head_dim, c.vocab_size, c.intermediate_size
  layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h  # q, k+v (biased), o, MLP, 2 norms
  text = 2 * v * h + c.num_hidden_layers * layer + h  # untied embed + lm_head, final norm
  vc = c.vision_config
  d, w = vc.hidden_size, 4 * vc.hidden_size
  block = 4 * d * d + 4 * d + 3 * d * vc.intermediate_size + 2 * vc.intermediate_size + d + 2 * d
  vision = vc.patch_dim * d + vc.depth * block + d + w * w + w + w * h + h
  assert n == text + vision == 8_292_166_656  # Qwen2.5-VL-7B-Instruct's published parameter count
  assert shapes["visual"]["patch_embed"]["proj"]["kernel"].shape == (3 * 2 * 14 * 14, 1280)
  assert shapes["language_model"]["layers_27"]["self_attn"]["k_proj"]["kernel"].shape == (3584, 512)
  assert shapes["lm_head"]["kernel"].shape == (3584, 152064)


def test_tiny_preset_on_an_emoshapes_image():
  c = qv.PRESETS["tiny"]
  assert c.vocab_size == tokenizers.TINY_CHAT_VOCAB_SIZE == 264 and c.image_token_id == tokenizers.IMAGE_PAD_ID
  assert len({tokenizers.IM_START_ID, tokenizers.IM_END_ID, tokenizers.VISION_START_ID, tokenizers.VISION_END_ID, tokenizers.IMAGE_PAD_ID}) == 5
  vc = c.vision_config
  grid = ((1, 32 // vc.patch_size, 32 // vc.patch_size),)  # one 32x32 image
  plan = qv.vision_plan(grid, vc)
  assert np.bincount(plan["window_seg"]).tolist() == [16] * 4  # four 4x4-patch windows
  assert vc.depth - 1 in vc.fullatt_block_indexes
  n_tokens = 64 // vc.spatial_merge_size ** 2
  ids = np.array([[1, tokenizers.VISION_START_ID] + [tokenizers.IMAGE_PAD_ID] * n_tokens + [tokenizers.VISION_END_ID, 40, 41]], np.int32)
  pixels = jnp.zeros((64, vc.patch_dim))
  params = qv.param_shapes(c)
  out = jax.eval_shape(lambda p: qv.QwenVL(c).apply({"params": p}, ids, None, pixels, grid), params)
  assert out.shape == (1, ids.shape[1], 264)
  with pytest.raises(TypeError, match="image_grid_thw must be static"):
    jax.jit(lambda g: qv.rope_index(c, ids, None, g))(np.array(grid))
  with pytest.raises(ValueError, match="16 image tokens in input_ids but the images give 32 features"):
    jax.eval_shape(lambda p: qv.QwenVL(c).apply({"params": p}, ids, None, jnp.zeros((128, vc.patch_dim)),
                                                 ((1, 8, 16),)), params)


@pytest.mark.parametrize("remat,scan_layers", [("dots_no_batch", False), ("none", True), ("full", True)])
def test_remat_and_scan_keep_the_loss_and_gradients(remat, scan_layers):
  """Rematerialised vision blocks and decoder layers, and scan_layers (the uncached forward runs the decoder as
  one lax.scan over stacked per-layer params; KV-cache decoding stays unrolled): same parameter tree, same loss
  and gradients as the plain unrolled model."""
  cfg = qv.PRESETS["tiny"]
  plain, variant = qv.QwenVL(cfg), qv.QwenVL(cfg, remat=remat, scan_layers=scan_layers)
  params = qv.init_params(cfg, jax.random.key(0), std=0.2)
  ids, mask, pixels, grid = qv.dummy_inputs(cfg)
  pixels = jax.random.normal(jax.random.key(1), pixels.shape)

  def loss(module):
    f = lambda p: jnp.mean(jax.nn.log_softmax(module.apply({"params": p}, ids, mask, pixels, grid)) ** 2)
    return jax.jit(jax.value_and_grad(f))

  (l0, g0), (l1, g1) = loss(plain)(params), loss(variant)(params)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  # per leaf, relative to its largest gradient: measured 7e-5, the size of the change a 1e-7 relative nudge of
  # the weights makes without remat (4e-5; this random deep net amplifies rounding), so 2e-4 is rounding
  worst = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max() / jnp.abs(b).max()), g1, g0)
  assert max(jax.tree.leaves(worst)) < 2e-4
  if scan_layers:
    assert "while" in jax.jit(lambda p: variant.apply({"params": p}, ids, mask, pixels, grid)).lower(params).as_text()


def test_scanned_decoder_with_adapters_equals_the_loop():
  """LoRA with scan_layers on the decoder (adapters on layers 0-1 only, so 0-1 and 2-3 scan apart): the same loss
  and adapter gradients as the unrolled decoder with the same adapters."""
  from emojax.models import lora as lora_lib
  cfg = qv.PRESETS["tiny"]
  params = qv.init_params(cfg, jax.random.key(0), std=0.2)
  ids, mask, pixels, grid = qv.dummy_inputs(cfg)
  config = lora_lib.LoRAConfig(rank=2, alpha=4.0, target_modules=r"layers\.[01]\.(self_attn\.q_proj|mlp\.down_proj)")
  adapters = lora_lib.init(params["language_model"], config, jax.random.key(1))
  adapters = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), adapters)

  def loss(module):
    def f(a):
      with lora_lib.enabled(a, config, root=("language_model",)):
        return jnp.mean(jax.nn.log_softmax(module.apply({"params": params}, ids, mask, pixels, grid)) ** 2)
    return jax.jit(jax.value_and_grad(f))(adapters)

  (l0, g0), (l1, g1) = loss(qv.QwenVL(cfg)), loss(qv.QwenVL(cfg, scan_layers=True))
  base = jax.jit(lambda p: jnp.mean(jax.nn.log_softmax(qv.QwenVL(cfg).apply({"params": p}, ids, mask, pixels,
                                                                              grid)) ** 2))(params)
  assert abs(float(l0) - float(base)) > 1e-6 * abs(float(base))  # the adapters change the output
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  # relative to the largest gradient (layer 0's q_proj gets ~1e-6, rounding, from the dummy tokens' flat attention)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale), g1, g0)
