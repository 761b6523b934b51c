"""LVLM generation for GRPO rollouts and judging: prompt (with its image) -> G sampled completions
per prompt with their per-token log-probs, as one jitted program with a KV cache; and the
training-time scorer `token_logprobs` that recomputes those log-probs in one uncached forward.

Layout. The prompt batch is left-padded to a fixed length L (`processor.prompt_batch`); the KV
cache has L + T slots, the t-th generated token sits in slot L + t. Generated tokens are text, so
their M-RoPE positions are (earlier real tokens + rope_delta) in all three channels, as
transformers decodes (`qwen_vl.text_position_ids`). Sample row b*G + g is the g-th sample of
prompt b.

G samples per prompt. The vision tower and rope_index run once per prompt. Then either the decoder
prefills the B prompts and the cache is repeated G times (prefill="once", the default: prefill
costs B rows instead of B*G), or the prompt embeddings are repeated and the B*G rows are
prefilled (prefill="tiled"); both give the same numbers. bench/lvlm_decode.py times the two.

Decoding is a lax.while_loop over at most T steps that stops once every row has ended its turn
(emitted one of eos_ids). After its end-of-turn token a row keeps running batched but its tokens
are pad_id, its log-probs 0 and its mask 0; mask is 1 for generated tokens up to and including
the end-of-turn token.

Log-probs are those of the policy that samples: log_softmax(logits / T) at the sampling temperature
T (T = 0, greedy, reports temperature-1 log-probs), as TRL and verl score. GRPO's ratio, its old
log-probs and the k3 KL to the reference are all taken under that same tempered policy, so
`token_logprobs` / `completion_logprobs` (the trainer's scorer) take the temperature too and the
first inner iteration's ratio is 1 up to float error. Nucleus truncation (top_p < 1) only restricts
which tokens are explored; it is not part of the scored density.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from emojax import parallel
from emojax.models import qwen_vl as qv


def _head(m: qv.QwenVL, h):
  """lm_head on decoder hidden states, in fp32; an untied head's logits vocabulary-parallel as its kernel."""
  if m.config.tie_word_embeddings:
    return m.language_model.attend(h).astype(jnp.float32)
  return parallel.constrain_logits(m.lm_head(h)).astype(jnp.float32)


def head_logprobs(model: qv.QwenVL, params, h, tokens, temperature: float = 1.0, chunk: int = 0):
  """log_softmax(lm_head(h) / T) at `tokens`: (N, T, D) final hidden states -> (N, T) fp32. With 0 < chunk < T the
  positions are scored `chunk` at a time in a rematerialised lax.scan, so only one chunk's (N, chunk, V) logits
  exist at once, in the backward too (the 7B's vocabulary is 152k). The token's logit is a one-hot sum, not a
  gather, so a vocabulary-parallel head reduces it like the softmax: one number a position crosses devices."""
  def score(h, tok):
    logits = tempered(model.apply({"params": params}, h, method=_head), temperature)
    shifted = logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True))  # as jax.nn.log_softmax, bit for bit
    picked = jnp.sum(shifted * jax.nn.one_hot(tok, logits.shape[-1], dtype=logits.dtype), -1)
    return picked - jnp.log(jnp.sum(jnp.exp(shifted), -1))

  n, t = tokens.shape
  if not 0 < chunk < t:
    return score(h, tokens)
  steps = -(-t // chunk)
  pad = steps * chunk - t
  h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
  tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
  split = lambda a: jnp.moveaxis(a.reshape(n, steps, chunk, *a.shape[2:]), 1, 0)
  body = jax.checkpoint(lambda _, x: (None, parallel.constrain_batch(score(*x))))
  out = jax.lax.scan(body, None, (split(h), split(tokens)))[1]  # (steps, N, chunk)
  return parallel.constrain_batch(jnp.moveaxis(out, 0, 1).reshape(n, steps * chunk)[:, :t])


def image_features(model: qv.QwenVL, params, pixel_values, grid):
  """The vision tower's image tokens (sum of t*h*w/merge^2, D), differentiable. Images of one size
  (a prompt batch) run as a vmapped batch: the tower itself packs all images into one sequence
  with a (B*N)^2 segment mask, B times the attention FLOPs and mask memory of B separate images
  (bench "small", 8 images of 64x64: 1.06 s packed, 0.51 s vmapped). Same numbers to float error."""
  grid = qv.static_grid(grid)
  feats = lambda px, g: model.apply({"params": params}, px, g, method=qv.QwenVL.image_features)
  if len(grid) < 2 or len(set(grid)) > 1:
    return feats(pixel_values, grid)
  per_image = pixel_values.reshape(len(grid), -1, pixel_values.shape[-1])
  return jax.vmap(lambda px: feats(px, grid[:1]))(per_image).reshape(-1, model.config.hidden_size)


def prompt_inputs(m: qv.QwenVL, ids, mask, feats, grid):
  """Prompt embeddings with `feats` spliced in at the image tokens in order (as QwenVL.embed), M-RoPE
  positions and rope deltas. A method: call it inside model.apply(method=...)."""
  pos, deltas = qv.rope_index(m.config, ids, mask, grid)
  return qv.splice_images(m.config, m.language_model.embed(ids), ids, feats), pos, deltas


def _gen_positions(prompt_mask, gen_mask, deltas):
  """Positions (3, B, T) of generated tokens: earlier real tokens + rope delta (0 where masked)."""
  earlier = prompt_mask.sum(1, keepdims=True) + jnp.cumsum(gen_mask, 1) - gen_mask
  pos = jnp.where(gen_mask > 0, earlier + deltas, 0)
  return jnp.broadcast_to(pos[None], (3, *pos.shape)).astype(jnp.int32)


def tempered(logits, temperature: float):
  """logits / T, the policy's logits at sampling temperature T (T = 0, greedy: the logits as they are)."""
  return logits if temperature == 0 else logits / temperature


def choose(logits, key, temperature: float, top_p: float):
  """Next tokens from logits (N, V): argmax at temperature 0, else a sample from softmax(logits / T)
  restricted to the nucleus (the smallest prefix of tokens by descending probability whose mass
  reaches top_p; the most likely token always stays, so top_p -> 0 is greedy)."""
  if temperature == 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = logits / temperature
  if top_p >= 1:
    return jax.random.categorical(key, logits).astype(jnp.int32)
  order = jnp.argsort(-logits, axis=-1, stable=True)  # ties in index order, as argmax
  ranked = jnp.take_along_axis(logits, order, -1)
  probs = jax.nn.softmax(ranked, -1)
  keep = (jnp.cumsum(probs, -1) - probs < top_p).at[:, 0].set(True)  # mass before the token < top_p
  pick = jax.random.categorical(key, jnp.where(keep, ranked, -jnp.inf))
  return jnp.take_along_axis(order, pick[:, None], -1)[:, 0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "grid", "max_new_tokens", "num_samples", "temperature", "top_p",
                                             "eos_ids", "pad_id", "prefill"))
def sample_arrays(model, params, ids, mask, pixels, key, *, grid, max_new_tokens, num_samples, temperature, top_p,
                  eos_ids, pad_id, prefill):
  """`sample` on arrays with every static argument explicit: what `sample` calls and emojax.plan lowers ahead of
  time."""
  c = model.config
  b, l = ids.shape
  n, t_max, g = b * num_samples, max_new_tokens, num_samples
  rep = lambda a, axis=0: jnp.repeat(a, g, axis)
  apply = lambda fn, *args: model.apply({"params": params}, *args, method=fn)

  feats = image_features(model, params, pixels, grid)
  x, pos, deltas = apply(lambda m: prompt_inputs(m, ids, mask, feats, grid))
  cache_mask = jnp.concatenate([mask, jnp.ones((b, t_max), mask.dtype)], 1)

  def prefill_fn(m, x, pos, cache_mask, cache):
    h, cache = m.language_model(x, pos, cache_mask, cache, 0)
    return _head(m, h[:, -1]), cache  # left padding: the last slot is the last prompt token

  if prefill == "once":
    logits, cache = apply(prefill_fn, x, pos, cache_mask, qv.init_cache(c, b, l + t_max, model.dtype))
    logits, cache = rep(logits), jax.tree.map(rep, cache)
  elif prefill == "tiled":
    logits, cache = apply(prefill_fn, rep(x), rep(pos, 1), rep(cache_mask), qv.init_cache(c, n, l + t_max, model.dtype))
  else:
    raise ValueError(f"prefill must be 'once' or 'tiled', not {prefill!r}")
  cache_mask, n_real, deltas = rep(cache_mask), rep(mask.sum(1)), rep(deltas[:, 0])
  eos = jnp.asarray(eos_ids, jnp.int32)

  def emit(t, logits, done, out):
    """Choose token t from logits; write token, log-prob and mask; update done."""
    tok = choose(logits, jax.random.fold_in(key, t), temperature, top_p)
    lp = jnp.take_along_axis(jax.nn.log_softmax(tempered(logits, temperature), -1), tok[:, None], -1)[:, 0]
    live = ~done
    tok = jnp.where(live, tok, pad_id)
    put = lambda buf, v: jax.lax.dynamic_update_slice(buf, v[:, None].astype(buf.dtype), (0, t))
    out = (put(out[0], tok), put(out[1], jnp.where(live, lp, 0.0)), put(out[2], live))
    return tok, done | (live & jnp.isin(tok, eos)), out

  def step_fn(m, tok, pos, cache, index):
    h, cache = m.language_model(m.language_model.embed(tok[:, None]), pos, cache_mask, cache, index)
    return _head(m, h[:, 0]), cache

  def cond(state):
    t, _, done, _, _ = state
    return (t < t_max) & ~done.all()

  def body(state):
    t, tok, done, cache, out = state
    p = jnp.broadcast_to((n_real + t - 1 + deltas)[None, :, None], (3, n, 1)).astype(jnp.int32)
    logits, cache = apply(step_fn, tok, p, cache, l + t - 1)
    tok, done, out = emit(t, logits, done, out)
    return t + 1, tok, done, cache, out

  out = (jnp.full((n, t_max), pad_id, jnp.int32), jnp.zeros((n, t_max), jnp.float32), jnp.zeros((n, t_max), jnp.int32))
  tok, done, out = emit(0, logits, jnp.zeros((n,), bool), out)
  _, _, done, _, (tokens, logprobs, gen_mask) = jax.lax.while_loop(cond, body, (jnp.int32(1), tok, done, cache, out))
  return dict(tokens=tokens, logprobs=logprobs, mask=gen_mask, lengths=gen_mask.sum(1), finished=done)


def sample(model: qv.QwenVL, params, batch: dict, key, *, max_new_tokens: int, eos_ids, pad_id: int,
           num_samples: int = 1, temperature: float = 1.0, top_p: float = 1.0, prefill: str = "once") -> dict:
  """Generates up to max_new_tokens for each prompt of `batch` (`processor.prompt_batch`), num_samples
  times. Deterministic given key. temperature 0 is greedy. Returns (N = B * num_samples rows, prompt
  b's samples in rows b*G .. b*G + G - 1):

  tokens (N, T) int32 (pad_id after the end of turn), logprobs (N, T) float32 (log_softmax(logits /
  temperature) of each sampled token, temperature 1 when greedy; 0 where masked), mask (N, T) int32 (1 for generated tokens up
  to and including the end-of-turn token), lengths (N,) = mask.sum(1), finished (N,) bool (ended
  its turn within T tokens; False: truncated).
  """
  if temperature < 0 or not 0 <= top_p <= 1:
    raise ValueError(f"temperature must be >= 0 and top_p in [0, 1]; got {temperature}, {top_p}")
  return sample_arrays(model, params, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], key,
                       grid=qv.static_grid(batch["image_grid_thw"]), max_new_tokens=int(max_new_tokens),
                       num_samples=int(num_samples), temperature=float(temperature), top_p=float(top_p),
                       eos_ids=tuple(int(i) for i in np.atleast_1d(eos_ids)), pad_id=int(pad_id), prefill=prefill)


def completion_logprobs(model: qv.QwenVL, params, input_ids, attention_mask, pixel_values, tokens, mask, grid,
                        temperature: float = 1.0, chunk: int = 0):
  """Traceable core of `token_logprobs` (call it inside a jitted loss; grid, temperature and chunk static; chunk:
  `head_logprobs`)."""
  b, l = input_ids.shape
  g = tokens.shape[0] // b
  if g * b != tokens.shape[0]:
    raise ValueError(f"{tokens.shape[0]} completions for {b} prompts: not a whole number of samples per prompt")

  feats = image_features(model, params, pixel_values, grid)

  def fn(m):
    x, pos, deltas = prompt_inputs(m, input_ids, attention_mask, feats, grid)
    rep = lambda a, axis=0: jnp.repeat(a, g, axis)
    prompt_mask = rep(attention_mask)
    x = jnp.concatenate([rep(x), m.language_model.embed(tokens)], 1)
    pos = jnp.concatenate([rep(pos, 1), _gen_positions(prompt_mask, mask, rep(deltas))], 2)
    h, _ = m.language_model(x, pos, jnp.concatenate([prompt_mask, mask.astype(prompt_mask.dtype)], 1))
    return h[:, l - 1:-1]  # position i predicts token i + 1: the states scoring the T completion tokens

  lp = head_logprobs(model, params, model.apply({"params": params}, method=fn), tokens, temperature, chunk)
  return jnp.where(mask > 0, lp, 0.0)


def target_logits(model: qv.QwenVL, params, batch: dict, grid) -> jax.Array:
  """Teacher forcing: fp32 logits (B, T, V) predicting each of the T target tokens (batch
  target_ids, target_mask: `processor.target_batch`) after its prompt, from one forward over
  prompt + target (position L - 1 + t predicts target token t); each answer token sits at the
  position (and M-RoPE position) `sample` would generate it at. Traceable; grid static."""
  ids = jnp.concatenate([batch["input_ids"], batch["target_ids"]], 1)
  mask = jnp.concatenate([batch["attention_mask"], batch["target_mask"]], 1)
  pixels = batch["pixel_values"].reshape(-1, batch["pixel_values"].shape[-1])
  feats = image_features(model, params, pixels, grid)
  l, t = batch["input_ids"].shape[1], batch["target_ids"].shape[1]

  def fn(m):
    x, pos, _ = prompt_inputs(m, ids, mask, feats, grid)
    return m.decode(x, pos, mask)[0][:, l - 1:l + t - 1]

  return model.apply({"params": params}, method=fn).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "grid", "temperature", "chunk"))
def _token_logprobs(model, params, input_ids, attention_mask, pixel_values, tokens, mask, *, grid, temperature, chunk):
  return completion_logprobs(model, params, input_ids, attention_mask, pixel_values, tokens, mask, grid, temperature,
                             chunk)


def token_logprobs(model: qv.QwenVL, params, batch: dict, tokens, mask, temperature: float = 1.0, chunk: int = 0):
  """Per-token log-probs (N, T) at `temperature` of completions `tokens` (N = B * G rows, as `sample`
  returns them) given the prompts of `batch`, in one uncached forward over prompt + completion;
  0 where mask is 0. The training-time scorer: equals sample's logprobs (same temperature) where
  mask is 1."""
  if not temperature > 0:
    raise ValueError(f"log-probs need a positive temperature, got {temperature}")
  return _token_logprobs(model, params, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                         jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32),
                         grid=qv.static_grid(batch["image_grid_thw"]), temperature=float(temperature),
                         chunk=int(chunk))
