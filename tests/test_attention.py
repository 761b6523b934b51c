"""emojax.models.attention: blockwise == xla (forward and gradients) for every mask form, the xla path against
the models' own attention code, the splash kernel in interpret mode, auto's choices, errors, linear memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.models import attention as A

B, H, D = 2, 4, 16


def qkv(t, s=None, h=H, kh=None, dtype=jnp.float32, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  s, kh = s or t, kh or h
  q = jax.random.normal(ks[0], (B, t, h, D))
  k, v = (jax.random.normal(key, (B, s, kh, D)) for key in ks[1:3])
  w = jax.random.normal(ks[3], (B, t, h, D))  # loss weights: sum(out * w)
  return tuple(x.astype(dtype) for x in (q, k, v)) + (w,)


def lengths_mask(s, lengths):
  return jnp.arange(s)[None, :] < jnp.asarray(lengths)[:, None]


def windows(t, size):
  return jnp.broadcast_to(jnp.arange(t) // size, (B, t))


def value_and_grads(q, k, v, w, bias, impl, chunk=32, q_chunk=None, **kw):
  def loss(q, k, v, bias):
    out = A.dot_product_attention(q, k, v, bias=bias, implementation=impl, chunk_size=chunk, q_chunk_size=q_chunk,
                                  **kw)
    return jnp.sum(out.astype(jnp.float32) * w), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, bias)
  return out, grads


def compare(q, k, v, w, bias=None, tol=1e-5, chunk=32, q_chunk=None, **kw):
  ref = value_and_grads(q, k, v, w, bias, "xla", **kw)
  got = value_and_grads(q, k, v, w, bias, "blockwise", chunk, q_chunk, **kw)
  for name, a, b in zip(("out", "dq", "dk", "dv", "dbias"), jax.tree.leaves(ref), jax.tree.leaves(got)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.isfinite(b).all(), name
    np.testing.assert_allclose(b, a, atol=tol, rtol=tol, err_msg=name)
  return got


CASES = {
    "plain": lambda: dict(),
    "causal_key_padding": lambda: dict(causal=True, key_mask=lengths_mask(100, [37, 100])),
    "segments": lambda: dict(segment_ids=windows(100, 24)),
    "dense_window_mask": lambda: dict(mask=(windows(100, 24)[:1, :, None] == windows(100, 24)[:1, None, :])[:, None]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_blockwise_matches_xla(case):
  compare(*qkv(100), **CASES[case]())  # 100 = 3 chunks of 32 + 4: padded keys and queries


def test_query_chunks_and_gqa():
  q, k, v, w = qkv(100, h=4, kh=2)
  compare(q, k, v, w, causal=True, key_mask=lengths_mask(100, [90, 100]), q_chunk=24)
  compare(q, k, v, w, segment_ids=windows(100, 30), chunk=100)  # one key chunk


@pytest.mark.parametrize("shape", [(1, H, 70, 70), (B, 1, 1, 70)])
def test_bias_and_its_gradient(shape):
  q, k, v, w = qkv(70)
  bias = jax.random.normal(jax.random.key(7), shape)  # T5: (1, H, T, S) relative position bias
  compare(q, k, v, w, bias, key_mask=lengths_mask(70, [70, 50]))


def test_cache_offset_and_unequal_lengths():
  q, k, v, w = qkv(40, s=130)  # 40 new tokens at slots 90..129 of a 130-slot cache
  compare(q, k, v, w, causal=True, q_offset=jnp.int32(90), key_mask=lengths_mask(130, [130, 120]), chunk=48)


def test_keyless_rows_are_zero_with_finite_gradients():
  q, k, v, w = qkv(64)
  qs = windows(64, 16).at[:, 8:13].set(99)  # rows 8..12: a segment no key has
  out = compare(q, k, v, w, causal=True, q_offset=-3, key_mask=lengths_mask(64, [64, 0]),  # rows 0..2: before key 0
                segment_ids=(qs, windows(64, 16)))[0]  # batch row 1: no keys at all
  out = np.asarray(out)
  assert np.all(out[:, :3] == 0) and np.all(out[:, 8:13] == 0) and np.all(out[1] == 0) and np.all(out[0, 3:8] != 0)


def test_bf16():
  q, k, v, w = qkv(100, dtype=jnp.bfloat16)
  out, grads = compare(q, k, v, w, tol=3e-2, causal=True, key_mask=lengths_mask(100, [100, 70]))
  assert out.dtype == grads[0].dtype == jnp.bfloat16


def test_xla_path_is_todays_numerics():
  q, k, v, _ = qkv(50)
  # qwen_vl's decoder: a causal & key-padding mask into jax.nn.dot_product_attention
  am = lengths_mask(50, [50, 44])
  m = (jnp.arange(50)[None, :] <= jnp.arange(50)[:, None])[None, None] & am[:, None, None, :]
  ours = A.dot_product_attention(q, k, v, causal=True, key_mask=am, implementation="xla")
  np.testing.assert_array_equal(ours, jax.nn.dot_product_attention(q, k, v, mask=m))
  # t5: fp32 scores + relative bias + finfo.min key-padding bias, no scaling
  bias = jax.random.normal(jax.random.key(1), (1, H, 50, 50))
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias + jnp.where(am[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
  t5 = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
  ours = A.dot_product_attention(q, k, v, bias=bias, key_mask=am, scale=1.0, implementation="xla")
  np.testing.assert_allclose(ours, t5, atol=1e-6, rtol=1e-6)


def test_splash_interpret_matches_xla():
  t, s = 200, 200  # padded to 256 inside (splash blocks are 128)
  q, k, v, w = qkv(t, s, h=2, kh=1)
  qs = windows(t, 64).at[:, :3].set(99)  # three key-less rows
  kw = dict(causal=True, key_mask=lengths_mask(s, [200, 150]), segment_ids=(qs, windows(s, 64)))

  def run(impl):
    f = lambda q, k, v: A.dot_product_attention(q, k, v, implementation=impl, interpret=True, **kw)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(w.astype(out.dtype)))

  for name, a, b in zip(("out", "dq", "dk", "dv"), jax.jit(lambda: run("xla"))(), jax.jit(lambda: run("splash"))()):
    np.testing.assert_allclose(b, a, atol=2e-5, rtol=2e-5, err_msg=name)


def test_auto_choices():
  sds = lambda t, h=H, dtype=jnp.float32: jax.ShapeDtypeStruct((1, t, h, 64), dtype)
  auto = lambda backend, t, dtype=jnp.float32, **kw: A._auto(backend, sds(t, dtype=dtype), sds(t, dtype=dtype),
                                                             kw.get("bias"), kw.get("mask"), kw.get("q_offset", 0),
                                                             kw.get("segs"), kw.get("key_mask"))
  n = A.AUTO_MIN_TOKENS["cpu"]
  assert auto("cpu", n - 1) == "xla" and auto("cpu", n) == "blockwise"
  assert A._auto("cpu", sds(1), sds(100_000), None, None, 0, None, None) == "xla"  # decode step, long cache
  assert auto("tpu", 4096) == "splash" and auto("tpu", 4096, bias=1.0) == "blockwise"
  assert auto("gpu", 4096, jnp.bfloat16) == "cudnn" and auto("gpu", 4096) == "blockwise"
  assert auto("gpu", 4096, jnp.bfloat16, key_mask=1) == "blockwise"


def test_errors():
  q, k, v, _ = qkv(8)
  with pytest.raises(ValueError, match=r"^implementation='nope': expected one of auto, xla, blockwise, cudnn, "
                                       r"splash$"):
    A.dot_product_attention(q, k, v, implementation="nope")
  for impl in ("cudnn", "splash"):
    with pytest.raises(ValueError, match=rf"^implementation='{impl}' is not available on cpu; it has: auto, xla, "
                                         r"blockwise$"):
      A.dot_product_attention(q, k, v, implementation=impl)
  for c in (0, -4):
    with pytest.raises(ValueError, match=rf"^chunk_size={c}: must be a positive int$"):
      A.dot_product_attention(q, k, v, chunk_size=c)
  with pytest.raises(ValueError, match="not a multiple of 3 key/value heads"):
    A.dot_product_attention(q, k[:, :, :3], v[:, :, :3])


def _temp_bytes(impl, t, h):
  x = jax.ShapeDtypeStruct((1, t, h, 32), jnp.float32)
  loss = lambda q, k, v: A.dot_product_attention(q, k, v, causal=True, implementation=impl).sum()
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_memory_is_linear():
  t, h = 4096, 4
  logits = t * t * h * 4
  assert _temp_bytes("xla", t, h) >= logits  # the measure sees the [T, T] logits when they exist
  temp = _temp_bytes("blockwise", t, h)  # fixed chunk buffers (a few x 256² x H x 4 B) + O(T) terms
  assert temp < logits / 8
  assert _temp_bytes("blockwise", 2 * t, h) < 2.5 * temp  # linear: < 2x; quadratic: 4x


def test_config_names_are_the_implementations():
  from emojax import config_utils as cu
  assert cu.ATTENTIONS == A.IMPLEMENTATIONS


def _max_err(out, want, rows=None):
  d = np.abs(np.asarray(out, np.float32) - want)
  return float((d if rows is None else d[rows]).max())


def test_models_on_blockwise_match_their_references():
  """Every model's `attention` field reaches its attention call, with each model's masks (segments, causal
  offsets, padding, bias): on blockwise each still matches the PyTorch reference in its golden. (These sequences
  fit one 256-key chunk; several chunks are compared with xla on raw arrays above.)"""
  from conftest import read_golden
  from emojax.models import mmdit, qwen_vl as qv, t5, text_encoder as te
  impl = "blockwise"
  # MMDiT: joint attention over image + text tokens, one dual-attention block
  cfg, state, z = read_golden("mmdit_dual_qknorm")
  config = mmdit.MMDiTConfig.from_dict(cfg)
  inputs = [z[k] for k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")]
  out = mmdit.MMDiT(config, attention=impl).apply({"params": mmdit.load_diffusers_params(state, config)}, *inputs)
  assert _max_err(out, z["output"]) <= 1e-4
  # Qwen2.5-VL: windowed / full vision segments, causal GQA decoder with left padding
  cfg, state, z = read_golden("qwen_vl_tied")
  config = qv.QwenVLConfig.from_hf_dict(cfg)
  logits = qv.QwenVL(config, attention=impl).apply(
      {"params": qv.load_hf_qwen_vl_params(state, config)}, z["input_ids"], z["attention_mask"], z["pixel_values"],
      qv.static_grid(z["image_grid_thw"]))
  assert _max_err(logits, z["logits"], z["attention_mask"].astype(bool)) <= 1e-4
  # T5: the relative position bias as `bias`, padding as key_mask
  cfg, state, z = read_golden("t5_gated")
  config = t5.T5Config.from_hf_dict(cfg)
  out = t5.T5Encoder(config, attention=impl).apply({"params": t5.load_hf_t5_params(state, config)},
                                                   z["input_ids"], z["attention_mask"])
  real = z["attention_mask"].astype(bool)
  assert _max_err(out, z["last_hidden_state"], real) <= 1e-4
  # CLIP text: causal
  cfg, state, z = read_golden("clip_text_eos49")
  config = te.TextEncoderConfig.from_hf_dict(cfg)
  tokens, pooled = te.TextEncoder(config, attention=impl).apply(
      {"params": te.load_hf_clip_text_params(state, config)}, z["input_ids"])
  assert _max_err(pooled, z["text_embeds"]) <= 1e-4
  with pytest.raises(ValueError, match="implementation='flash': expected one of auto, xla, blockwise"):
    te.TextEncoder(config, attention="flash").apply({"params": te.load_hf_clip_text_params(state, config)},
                                                    z["input_ids"])
