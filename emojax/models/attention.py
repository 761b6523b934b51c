"""One attention function for every model, the implementation chosen by name.

  out = dot_product_attention(q, k, v, causal=True, key_mask=attention_mask > 0, implementation="auto")

Layout [B, T, H, D] (every model here), k and v [B, S, K, D] with K dividing H (grouped-query attention; k/v are
never repeated). Which keys query i sees is the AND of: `mask` (dense bool, broadcastable to [B, H, T, S]),
`causal` (key j <= i + q_offset; q_offset is the first query's position, e.g. a KV cache's index), `key_mask`
([B, S] bool, key padding) and `segment_ids` ([B, T] for self-attention, or a (q [B, T], kv [B, S]) pair: same id
attends). Only the dense `mask` and `bias` cost [T, S] memory; the other forms stay linear on `blockwise` and
`splash`. `bias` (broadcastable to [B, H, T, S], float) is added to the scaled logits (T5's relative positions).
A query that sees no key gets output 0 (and zero gradients) on every implementation.

Implementations:
  xla        jax.nn.dot_product_attention(implementation="xla") on the combined dense mask: the models'
             numerics today (fp32 logits and softmax), except that key-less rows give 0, not the mean of v.
  blockwise  exact online-softmax over key/value chunks (and query chunks), lax loops; a custom_vjp recomputes
             each chunk's logits from the saved (out, logsumexp). Memory O((T + S) * chunk), never [T, S].
  cudnn      jax.nn.dot_product_attention(implementation="cudnn"): GPU only, fp16/bf16, head dim <= 128.
  splash     Pallas splash-attention (jax.experimental.pallas.ops.tpu), TPU; no dense mask or bias, q_offset
             a Python int. interpret=True runs the kernel on any backend (slowly; tests).
  auto       AUTO below: blockwise / splash / cudnn once Tq * S reaches AUTO_MIN_TOKENS[backend]², else xla.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "splash")
BACKEND_IMPLEMENTATIONS = {"cpu": ("auto", "xla", "blockwise"), "gpu": ("auto", "xla", "blockwise", "cudnn"),
                           "tpu": ("auto", "xla", "blockwise", "splash")}
# sqrt(Tq * S) from which auto leaves xla. cpu: bench/attention.py (docs/attention.md); gpu/tpu: not measured.
CHUNK = 256  # blockwise's default key (and query) chunk
AUTO_MIN_TOKENS = {"cpu": 1024, "gpu": 1024, "tpu": 1024}
_SENTINEL = np.iinfo(np.int32).min  # segment id of padding keys on the splash path
_SPLASH_BLOCK = 128


def dot_product_attention(q, k, v, *, bias=None, mask=None, causal: bool = False, q_offset=0, key_mask=None,
                          segment_ids=None, scale: float | None = None, implementation: str = "auto",
                          chunk_size: int = CHUNK, q_chunk_size: int | None = None, interpret: bool = False):
  """q [B, T, H, D], k/v [B, S, K, D] -> [B, T, H, D] in q's dtype; see the module docstring."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}: expected one of {', '.join(IMPLEMENTATIONS)}")
  for name, c in (("chunk_size", chunk_size), ("q_chunk_size", q_chunk_size)):
    if c is not None and (not isinstance(c, (int, np.integer)) or c <= 0):
      raise ValueError(f"{name}={c!r}: must be a positive int")
  backend = require(implementation, interpret)
  if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"expected q [B, T, H, D], k = v [B, S, K, D]; got {q.shape}, {k.shape}, {v.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads")
  scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
  segs = _segments(segment_ids, q.shape[1], k.shape[1])
  if implementation == "auto":
    implementation = _auto(backend, q, k, bias, mask, q_offset, segs, key_mask)
  if implementation == "xla":
    return _xla(q, k, v, bias, mask, causal, q_offset, key_mask, segs, scale)
  if implementation == "cudnn":
    return _cudnn(q, k, v, bias, mask, causal, q_offset, key_mask, segs, scale)
  if implementation == "splash":
    return _splash(q, k, v, bias, mask, causal, q_offset, key_mask, segs, scale, interpret)
  return blockwise(q, k, v, bias=bias, mask=mask, causal=causal, q_offset=q_offset, key_mask=key_mask,
                   segs=segs, scale=scale, chunk_size=chunk_size, q_chunk_size=q_chunk_size)


def require(implementation: str, interpret: bool = False, what: str = "implementation") -> str:
  """The backend's name when it runs `implementation` (a job checks model.attention before it writes anything)."""
  backend = jax.default_backend()
  backend = backend if backend in BACKEND_IMPLEMENTATIONS else "cpu"
  has = BACKEND_IMPLEMENTATIONS[backend]
  if implementation not in has and not (implementation == "splash" and interpret):
    raise ValueError(f"{what}={implementation!r} is not available on {backend}; it has: {', '.join(has)}")
  return backend


def _segments(segment_ids, tq, s):
  if segment_ids is None:
    return None
  if isinstance(segment_ids, (tuple, list)):
    qs, ks = segment_ids
  else:
    if tq != s:
      raise ValueError(f"one segment_ids array needs T == S (got {tq}, {s}); pass (q_segment_ids, kv_segment_ids)")
    qs = ks = segment_ids
  return jnp.asarray(qs, jnp.int32), jnp.asarray(ks, jnp.int32)


def _auto(backend, q, k, bias, mask, q_offset, segs, key_mask):
  tq, s, d = q.shape[1], k.shape[1], q.shape[3]
  if tq * s < AUTO_MIN_TOKENS[backend] ** 2:
    return "xla"
  if backend == "tpu" and bias is None and mask is None and isinstance(q_offset, (int, np.integer)):
    return "splash"
  dense_free = mask is None and segs is None and key_mask is None and isinstance(q_offset, int) and q_offset == 0
  if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and d <= 128 and d % 8 == 0 and dense_free:
    return "cudnn"
  return "blockwise"


# ------------------------------------------------------------------------------------- dense-mask paths


def _dense_mask(tq, s, mask, causal, q_offset, key_mask, segs):
  """The AND of every mask form as one bool [B|1, H|1, T, S], or None."""
  m = None if mask is None else jnp.asarray(mask, bool)
  and_ = lambda a, b: b if a is None else a & b
  if causal:
    m = and_(m, (jnp.arange(s)[None, :] <= jnp.arange(tq)[:, None] + q_offset)[None, None])
  if key_mask is not None:
    m = and_(m, jnp.asarray(key_mask, bool)[:, None, None, :])
  if segs is not None:
    m = and_(m, (segs[0][:, :, None] == segs[1][:, None, :])[:, None])
  return m


def _zero_keyless_rows(out, m):
  """out [B, T, H, D] * any(m, keys): rows that see no key -> 0 (also their gradients)."""
  if m is None:
    return out
  return out * jnp.any(m, -1).transpose(0, 2, 1)[..., None].astype(out.dtype)


def _xla(q, k, v, bias, mask, causal, q_offset, key_mask, segs, scale):
  m = _dense_mask(q.shape[1], k.shape[1], mask, causal, q_offset, key_mask, segs)
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=m, scale=scale, implementation="xla")
  return _zero_keyless_rows(out, m)


def _cudnn(q, k, v, bias, mask, causal, q_offset, key_mask, segs, scale):
  plain_causal = causal and isinstance(q_offset, int) and q_offset == 0  # cuDNN's own causal skips blocks
  m = _dense_mask(q.shape[1], k.shape[1], mask, causal and not plain_causal, q_offset, key_mask, segs)
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=m, scale=scale, is_causal=plain_causal,
                                     implementation="cudnn")
  return _zero_keyless_rows(out, m)


# ----------------------------------------------------------------------------------------------- splash


def _row_has_key(tq, s, causal, q_offset, key_mask, segs):
  """[B|1, T] bool: does query i see any key, from the linear mask forms (sort + search, no [T, S])."""
  if key_mask is None and segs is None:
    return (jnp.arange(tq) + q_offset >= 0)[None] if causal else None
  qs, ks = segs if segs is not None else (jnp.zeros((1, tq), jnp.int32), jnp.zeros((1, s), jnp.int32))
  if key_mask is not None:
    ks = jnp.where(jnp.asarray(key_mask, bool), ks, _SENTINEL)
  b = max(qs.shape[0], ks.shape[0])
  qs, ks = jnp.broadcast_to(qs, (b, tq)), jnp.broadcast_to(ks, (b, s))
  order = jnp.argsort(ks, axis=1, stable=True)  # the first hit of a segment is its earliest key
  srt = jnp.take_along_axis(ks, order, 1)
  idx = jnp.minimum(jax.vmap(jnp.searchsorted)(srt, qs), s - 1)
  found = (jnp.take_along_axis(srt, idx, 1) == qs) & (qs != _SENTINEL)
  if causal:
    found &= jnp.take_along_axis(order, idx, 1) <= jnp.arange(tq) + q_offset
  return found


def _splash(q, k, v, bias, mask, causal, q_offset, key_mask, segs, scale, interpret):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  if bias is not None or mask is not None:
    raise ValueError("splash takes no bias or dense mask; use causal/key_mask/segment_ids or another implementation")
  if causal and not isinstance(q_offset, (int, np.integer)):
    raise ValueError("splash needs q_offset as a Python int (its causal mask is static)")
  b, tq, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  tqp, sp = -(-tq // _SPLASH_BLOCK) * _SPLASH_BLOCK, -(-s // _SPLASH_BLOCK) * _SPLASH_BLOCK
  qs, ks = segs if segs is not None else (jnp.zeros((1, tq), jnp.int32), jnp.zeros((1, s), jnp.int32))
  if key_mask is not None:
    ks = jnp.where(jnp.asarray(key_mask, bool), ks, _SENTINEL)
  qs, ks = jnp.broadcast_to(qs, (b, tq)), jnp.broadcast_to(ks, (b, s))
  qs = jnp.pad(qs, ((0, 0), (0, tqp - tq)))
  ks = jnp.pad(ks, ((0, 0), (0, sp - s)), constant_values=_SENTINEL)
  shape = (tqp, sp)
  head_mask = sm.CausalMask(shape, offset=int(q_offset)) if causal else sm.FullMask(shape)
  kernel = sk.make_splash_mqa_single_device(sm.MultiHeadMask([head_mask] * (h // kh)), interpret=interpret)
  qg = jnp.pad((q * scale).astype(q.dtype), ((0, 0), (0, tqp - tq), (0, 0), (0, 0)))  # splash does not scale
  qg = qg.reshape(b, tqp, kh, h // kh, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
  kt, vt = (jnp.pad(x, ((0, 0), (0, sp - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3) for x in (k, v))
  per_kv_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
  out = jax.vmap(lambda *a: per_kv_head(*a[:3], sk.SegmentIds(*a[3:])))(qg, kt, vt, qs, ks)
  out = out.transpose(0, 3, 1, 2, 4).reshape(b, tqp, h, d)[:, :tq]
  valid = _row_has_key(tq, s, causal, q_offset, key_mask, segs)
  return out if valid is None else out * valid[:, :, None, None].astype(out.dtype)


# -------------------------------------------------------------------------------------------- blockwise


class _Static(NamedTuple):
  scale: float
  causal: bool
  tq: int
  s: int
  cq: int
  ck: int


def blockwise(q, k, v, *, bias=None, mask=None, causal=False, q_offset=0, key_mask=None, segs=None,
              scale=None, chunk_size=CHUNK, q_chunk_size=None):
  """Flash-style attention in plain JAX; arguments as dot_product_attention (segs: a (q, kv) ids pair)."""
  b, tq, h, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  cq, ck = min(q_chunk_size or chunk_size, tq), min(chunk_size, s)
  st = _Static(float(d ** -0.5 if scale is None else scale), bool(causal), tq, s, cq, ck)
  tqp, sp = -(-tq // cq) * cq, -(-s // ck) * ck
  pad = lambda x, axis, n: x if x is None or x.shape[axis] == 1 else jnp.pad(
      x, [(0, n - x.shape[axis]) if i == axis else (0, 0) for i in range(x.ndim)])
  grouped = lambda x: None if x is None else pad(pad(_group_heads(jnp.asarray(x), kh, h // kh), 3, tqp), 4, sp)
  qg = pad(q.reshape(b, tq, kh, h // kh, d), 1, tqp)
  qs, ks = (None, None) if segs is None else (pad(segs[0], 1, tqp), pad(segs[1], 1, sp))
  km = None if key_mask is None else pad(jnp.asarray(key_mask, bool), 1, sp)
  mask = None if mask is None else jnp.asarray(mask, bool)
  out = _flash(st, qg, pad(k, 1, sp), pad(v, 1, sp), grouped(bias), grouped(mask), km, qs, ks,
               jnp.asarray(q_offset, jnp.int32))
  return out[:, :tq].reshape(b, tq, h, d)


def _group_heads(x, kh, g):
  """[B|1, H|1, T|1, S|1] -> [B|1, K|1, G|1, T|1, S|1], head h = k * G + g as in q's reshape."""
  if x.ndim != 4:
    raise ValueError(f"bias and mask must be 4-D, broadcastable to [B, H, T, S]; got shape {x.shape}")
  bb, hb, t, s = x.shape
  return x.reshape(bb, 1, 1, t, s) if hb == 1 else x.reshape(bb, kh, g, t, s)


def _take(x, axis, i, c):
  return x if x.shape[axis] == 1 else jax.lax.dynamic_slice_in_dim(x, i * c, c, axis)


def _add_block(buf, blk, i, j, cq, ck):
  """buf[..., i-th query chunk, j-th key chunk] += blk, for axes of size 1 the whole axis."""
  start = (0, 0, 0, i * cq if buf.shape[3] > 1 else 0, j * ck if buf.shape[4] > 1 else 0)
  return jax.lax.dynamic_update_slice(buf, jax.lax.dynamic_slice(buf, start, blk.shape) + blk, start)


def _logits(st, qi, kj, bias, mask, km, qs, ks, q_offset, i, j):
  """Scaled, biased, masked logits of query chunk i and key chunk j: f32 [B, K, G, cq, ck]; hidden = -inf."""
  logits = jnp.einsum("bqkgd,bskd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * st.scale
  if bias is not None:
    logits = logits + _take(_take(bias, 3, i, st.cq), 4, j, st.ck).astype(jnp.float32)
  qpos, kpos = i * st.cq + jnp.arange(st.cq), j * st.ck + jnp.arange(st.ck)
  keep = None
  and_ = lambda a, c: c if a is None else a & c
  if mask is not None:
    keep = _take(_take(mask, 3, i, st.cq), 4, j, st.ck)
  if st.causal:
    keep = and_(keep, kpos[None, :] <= qpos[:, None] + q_offset)
  if km is not None:
    keep = and_(keep, _take(km, 1, j, st.ck)[:, None, None, None, :])
  if qs is not None:
    keep = and_(keep, (_take(qs, 1, i, st.cq)[:, :, None] == _take(ks, 1, j, st.ck)[:, None, :])[:, None, None])
  if st.s % st.ck:
    keep = and_(keep, kpos < st.s)
  return logits if keep is None else jnp.where(keep, logits, -jnp.inf)


def _forward(st, q, k, v, bias, mask, km, qs, ks, q_offset):
  b, tqp, kh, g, d = q.shape
  nq, nk = tqp // st.cq, k.shape[1] // st.ck

  def q_chunk(_, i):
    qi = jax.lax.dynamic_slice_in_dim(q, i * st.cq, st.cq, 1)

    def kv_chunk(carry, j):
      m, l, acc = carry
      kj, vj = (jax.lax.dynamic_slice_in_dim(x, j * st.ck, st.ck, 1) for x in (k, v))
      logits = _logits(st, qi, kj, bias, mask, km, qs, ks, q_offset, i, j)
      m_new = jnp.maximum(m, logits.max(-1))
      m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # nothing seen yet: exp(-inf - 0) = 0, not NaN
      p = jnp.exp(logits - m_safe[..., None])
      corr = jnp.exp(m - m_safe)
      pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
      return (m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv), None

    init = (jnp.full((b, kh, g, st.cq), -jnp.inf), jnp.zeros((b, kh, g, st.cq)), jnp.zeros((b, kh, g, st.cq, d)))
    (m, l, acc), _ = jax.lax.scan(kv_chunk, init, jnp.arange(nk))
    empty = l == 0.0
    out = acc / jnp.where(empty, 1.0, l)[..., None]
    lse = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))  # empty rows: p = exp(-inf - 0) = 0
    return None, (out.transpose(0, 3, 1, 2, 4).astype(q.dtype), lse)

  _, (out, lse) = jax.lax.scan(q_chunk, None, jnp.arange(nq))  # [nq, B, cq, K, G, D], [nq, B, K, G, cq]
  out = out.transpose(1, 0, 2, 3, 4, 5).reshape(b, tqp, kh, g, d)
  return out, lse.transpose(1, 2, 3, 0, 4).reshape(b, kh, g, tqp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, bias, mask, km, qs, ks, q_offset):
  return _forward(st, q, k, v, bias, mask, km, qs, ks, q_offset)[0]


def _flash_fwd(st, q, k, v, bias, mask, km, qs, ks, q_offset):
  out, lse = _forward(st, q, k, v, bias, mask, km, qs, ks, q_offset)
  return out, (q, k, v, bias, mask, km, qs, ks, q_offset, out, lse)


def _flash_bwd(st, res, dout):
  q, k, v, bias, mask, km, qs, ks, q_offset, out, lse = res
  nq, nk = q.shape[1] // st.cq, k.shape[1] // st.ck
  delta = jnp.einsum("bqkgd,bqkgd->bkgq", dout.astype(jnp.float32), out.astype(jnp.float32))
  dbias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)

  def kv_chunk(carry, j):
    dq, dbias = carry
    kj, vj = (jax.lax.dynamic_slice_in_dim(x, j * st.ck, st.ck, 1) for x in (k, v))

    def q_chunk(carry, i):
      dk, dv, dq, dbias = carry
      qi, doi = (jax.lax.dynamic_slice_in_dim(x, i * st.cq, st.cq, 1) for x in (q, dout))
      lse_i, delta_i = (jax.lax.dynamic_slice_in_dim(x, i * st.cq, st.cq, 3)[..., None] for x in (lse, delta))
      p = jnp.exp(_logits(st, qi, kj, bias, mask, km, qs, ks, q_offset, i, j) - lse_i)
      dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(dout.dtype), doi, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bqkgd,bskd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_i)
      if dbias is not None:
        axes = tuple(a for a in range(5) if dbias.shape[a] == 1 and ds.shape[a] > 1)
        dbias = _add_block(dbias, ds.sum(axes, keepdims=True), i, j, st.cq, st.ck)
      ds = ds * st.scale
      dqi = jnp.einsum("bkgqs,bskd->bqkgd", ds.astype(k.dtype), kj, preferred_element_type=jnp.float32)
      dq = jax.lax.dynamic_update_slice_in_dim(dq, jax.lax.dynamic_slice_in_dim(dq, i * st.cq, st.cq, 1) + dqi,
                                               i * st.cq, 1)
      dk = dk + jnp.einsum("bkgqs,bqkgd->bskd", ds.astype(q.dtype), qi, preferred_element_type=jnp.float32)
      return (dk, dv, dq, dbias), None

    zeros = jnp.zeros(kj.shape, jnp.float32)
    (dk, dv, dq, dbias), _ = jax.lax.scan(q_chunk, (zeros, zeros, dq, dbias), jnp.arange(nq))
    return (dq, dbias), (dk, dv)

  (dq, dbias), (dk, dv) = jax.lax.scan(kv_chunk, (jnp.zeros(q.shape, jnp.float32), dbias0), jnp.arange(nk))
  unchunk = lambda x: x.transpose(1, 0, 2, 3, 4).reshape(k.shape)  # [nk, B, ck, K, D] -> [B, S, K, D]
  dbias = None if bias is None else dbias.astype(bias.dtype)
  return dq.astype(q.dtype), unchunk(dk).astype(k.dtype), unchunk(dv).astype(v.dtype), dbias, *([None] * 5)


_flash.defvjp(_flash_fwd, _flash_bwd)
