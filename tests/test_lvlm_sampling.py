"""LVLM sampling (tiny preset, random init): cached sampling vs the uncached scorer (GRPO's ratio-1
invariant), greedy vs step-by-step argmax of the full forward, nucleus, end-of-turn masking."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.io import tokenizers
from emojax.lvlm import processor as P
from emojax.lvlm import sampling as S
from emojax.models import qwen_vl as qv

T = 10
EOS = tuple(range(3, 23))  # stand-ins for <|im_end|>: common enough under random weights that rows end early
PAD = 0


def random_params(config, seed=0):
  """Random weights without tracing model.init (which compiles for ~15 s). With the tied head, small
  embeddings (N(0, 0.05²)) and large kernels (N(0, 4/fan_in)) keep the residual stream from echoing
  the input token: greedy decoding does not just repeat it. Norm scales 1, biases 0."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name in ("scale", "bias"):
      return jnp.full(s.shape, float(name == "scale"))
    std = 0.05 if name == "embedding" else 2 / np.sqrt(s.shape[0])
    return jnp.asarray(std * rng.standard_normal(s.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(leaf, qv.param_shapes(config))


@functools.cache
def setup():
  config = qv.PRESETS["tiny"]
  model, proc = qv.QwenVL(config), P.Processor.tiny(config)
  params = random_params(config)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  batch = P.prompt_batch(proc, images, ["Rate it.", "Rate the image, briefly."], max_prompt_len=104)
  return model, params, batch


@functools.cache
def sampled(key=1, prefill="once", num_samples=3, temperature=1.0, top_p=1.0, eos=EOS):
  model, params, batch = setup()
  out = S.sample(model, params, batch, jax.random.key(key), max_new_tokens=T, num_samples=num_samples,
                 temperature=temperature, top_p=top_p, eos_ids=eos, pad_id=PAD, prefill=prefill)
  return jax.tree.map(np.asarray, out)


def test_logprobs_equal_scorer():
  model, params, batch = setup()
  out = sampled()
  assert out["tokens"].shape == out["logprobs"].shape == out["mask"].shape == (6, T)
  assert 1 < out["lengths"].min() and out["lengths"].max() <= T  # some rows end early
  lp = np.asarray(S.token_logprobs(model, params, batch, out["tokens"], out["mask"]))
  err = np.abs(lp - out["logprobs"])[out["mask"] > 0].max()
  print(f"sampler vs uncached scorer log-probs: max abs error {err:.2e}")
  assert err <= 1e-5 and (lp[out["mask"] == 0] == 0).all()
  assert (out["logprobs"][out["mask"] > 0] < 0).all()


def test_logprobs_are_at_the_sampling_temperature():
  """At T = 0.7 the sampler reports log_softmax(logits / 0.7) of the sampled tokens, the logits taken
  from one plain (uncached) forward over prompt + sampled tokens; the scorer at 0.7 agrees, the
  temperature-1 log-probs of the same tokens do not (so the test fails if temperature is dropped)."""
  model, params, batch = setup()
  out = sampled(temperature=0.7)
  scored = np.asarray(S.token_logprobs(model, params, batch, out["tokens"], out["mask"], temperature=0.7))
  on = out["mask"] > 0
  assert np.abs(scored - out["logprobs"])[on].max() <= 1e-5
  # the plain forward reads an <|image_pad|> id as an image slot: keep the rows the random model did not emit one in
  ids, mask = batch["input_ids"], batch["attention_mask"]
  g, l = out["tokens"].shape[0] // ids.shape[0], ids.shape[1]
  rows = np.flatnonzero(~(out["tokens"] == tokenizers.IMAGE_PAD_ID).any(1))
  assert len(rows) >= 3
  prompt = rows // g
  per_image = batch["pixel_values"].reshape(ids.shape[0], -1, batch["pixel_values"].shape[-1])
  full_ids = np.concatenate([ids[prompt], out["tokens"][rows]], 1)
  full_mask = np.concatenate([mask[prompt], out["mask"][rows]], 1)
  pixels = per_image[prompt].reshape(-1, per_image.shape[-1])
  grids = tuple(batch["image_grid_thw"][i] for i in prompt)
  logits = jax.jit(lambda p: model.apply({"params": p}, full_ids, full_mask, pixels, grids))(params)
  logits = np.asarray(logits, np.float32)[:, l - 1:-1]
  pick = lambda lp: np.take_along_axis(lp, out["tokens"][rows][..., None], -1)[..., 0]
  on = on[rows]
  want = pick(np.asarray(jax.nn.log_softmax(logits / 0.7, -1)))
  assert np.abs(out["logprobs"][rows] - want)[on].max() <= 1e-5
  at_one = pick(np.asarray(jax.nn.log_softmax(logits, -1)))
  assert np.abs(at_one - out["logprobs"][rows])[on].max() > 1e-2


def test_prefill_once_equals_tiled():
  a, b = sampled(), sampled(prefill="tiled")
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-5)


def test_end_of_turn():
  out = sampled()
  for tok, mask, lp, n, fin in zip(out["tokens"], out["mask"], out["logprobs"], out["lengths"], out["finished"]):
    ends = np.flatnonzero(np.isin(tok[:n], EOS))
    assert fin == (len(ends) > 0) and (not fin or ends.tolist() == [n - 1])  # the first end of turn is the last
    assert mask[:n].all() and not mask[n:].any() and (tok[n:] == PAD).all() and (lp[n:] == 0).all()
    assert fin or n == T


@functools.cache
def uncached_greedy():
  """argmax step by step with the full forward (no cache) over a fixed buffer: the prompt, the
  tokens so far and masked-out slots after them, which causal attention never sees."""
  model, params, batch = setup()
  ids, mask = batch["input_ids"], batch["attention_mask"]
  b, l = ids.shape
  fwd = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, batch["pixel_values"], batch["image_grid_thw"]))
  buf, bmask = np.pad(ids, ((0, 0), (0, T))), np.pad(mask, ((0, 0), (0, T)))
  lps = np.zeros((b, T), np.float32)
  for t in range(T):
    logits = np.asarray(fwd(params, buf, bmask))[:, l + t - 1]
    buf[:, l + t], bmask[:, l + t] = logits.argmax(-1), 1
    lps[:, t] = np.asarray(jax.nn.log_softmax(logits))[np.arange(b), buf[:, l + t]]
  return buf[:, l:], lps


def test_greedy_equals_uncached_argmax():
  # The reference also runs QwenVL's own (packed) vision tower, which sampling replaces by a vmap.
  tokens, lps = uncached_greedy()
  out = sampled(num_samples=1, temperature=0.0, eos=())
  np.testing.assert_array_equal(out["tokens"], tokens)
  np.testing.assert_allclose(out["logprobs"], lps, atol=1e-5)
  assert out["mask"].all() and not out["finished"].any() and (out["lengths"] == T).all()
  assert len(np.unique(tokens)) > 2  # not a degenerate repeat of one token


def test_top_p_to_zero_is_greedy():
  greedy = sampled(num_samples=1, temperature=0.0, eos=())
  nucleus = sampled(num_samples=1, temperature=1.0, top_p=1e-6, eos=())
  np.testing.assert_array_equal(nucleus["tokens"], greedy["tokens"])


def test_deterministic():
  a = sampled()
  model, params, batch = setup()
  again = S.sample(model, params, batch, jax.random.key(1), max_new_tokens=T, num_samples=3, eos_ids=EOS, pad_id=PAD)
  np.testing.assert_array_equal(again["tokens"], a["tokens"])
  assert not np.array_equal(sampled(key=2)["tokens"], a["tokens"])
  assert not np.array_equal(a["tokens"][0], a["tokens"][1])  # a prompt's G samples differ


def test_choose_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
  picks = np.asarray(S.choose(logits, jax.random.key(0), 1.0, 0.7))
  assert set(np.unique(picks)) == {0, 1}  # 0.5 < 0.7 <= 0.8: the nucleus is the first two
  assert abs((picks == 0).mean() - 0.5 / 0.8) < 0.03
  with pytest.raises(ValueError, match="top_p in"):
    S.sample(None, None, None, None, max_new_tokens=1, eos_ids=(), pad_id=0, top_p=1.5)



def test_chunked_vocab_parallel_logprobs_equal_the_whole_head():
  """An untied head: log-probs scored 4 answer tokens at a time (3 chunks for T=10, the last padded) equal the
  whole head's, with their gradients; on fsdp=8 the head's kernel splits its vocabulary and the sharded scorer
  equals the unsharded one."""
  from emojax import parallel
  import dataclasses
  config = dataclasses.replace(qv.PRESETS["tiny"], tie_word_embeddings=False, vocab_size=264)
  model, params = qv.QwenVL(config), random_params(config, seed=3)
  _, _, batch = setup()
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, config.vocab_size, (6, T)), jnp.int32)
  mask = jnp.asarray(np.arange(T)[None] < rng.integers(3, T + 1, (6, 1)), jnp.int32)
  grid = qv.static_grid(batch["image_grid_thw"])
  weights = jnp.asarray(rng.standard_normal((6, T)), jnp.float32)

  def loss(p, chunk):
    lp = S.completion_logprobs(model, p, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], tokens,
                               mask, grid, 0.7, chunk)
    return jnp.sum(lp * weights), lp

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, whole), g_whole = grad(params, 0)
  (_, chunked), g_chunked = grad(params, 4)
  np.testing.assert_allclose(chunked, whole, atol=1e-5)
  assert np.abs(np.asarray(whole)[np.asarray(mask) > 0]).min() > 0  # real log-probs, not the masked zeros
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max()))),
               g_chunked, g_whole)

  mesh = parallel.make_mesh(1, 8, 1)
  shard = parallel.param_shardings(params, mesh, parallel.QWEN_VL_PARAM_RULES)
  assert shard["lm_head"]["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp")  # 264 / 8 vocab rows each
  with jax.set_mesh(mesh):
    (_, sharded), g_sharded = grad(jax.device_put(params, shard), 4)
  np.testing.assert_allclose(sharded, whole, rtol=5e-5, atol=1e-4)  # reassociated sums, |log-prob| ~ 10
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(np.abs(b).max()))),
               g_sharded, g_whole)
