"""Attention forward+backward on CPU: emojax.models.attention's xla vs blockwise, and torch's SDPA.

  python -m bench.attention                                   # 400, 1357, 4096 tokens, 24 heads x 64
  python -m bench.attention --lengths=2048,3072 --chunks=256,512,1024 --torch_threads=2,1

Self-attention without a mask (the MMDiT's joint attention: 1357 = 1024 image + 333 text tokens at 512 px),
batch B, fp32. One jitted value_and_grad of sum(out * w) w.r.t. q, k, v per implementation and length;
`<impl>_s` is the median of --repeats runs after --warmup (implementations round-robin, so they share the
background load), `<impl>_best_s` the fastest; `<impl>_temp_mb` / `_peak_mb` are XLA's memory_analysis() of
the compiled program (temporaries; temporaries + arguments + outputs); `<impl>_max_abs_diff` compares the three
gradients with xla's (torch's: out too). blockwise runs once per --chunks value (`blockwise_c<chunk>`, query chunk = key
chunk). torch: F.scaled_dot_product_attention on [B, H, T, D] tensors, forward + backward of the same loss, per
--torch_threads count (`torch_s`, or `torch_<n>thr_s`). One JSON line per length.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from emojax.models import attention


def _program(impl, chunk):
  def loss(q, k, v, w):
    return jnp.sum(attention.dot_product_attention(q, k, v, implementation=impl, chunk_size=chunk) * w)
  return jax.value_and_grad(loss, argnums=(0, 1, 2))


def _memory(compiled):
  m = compiled.memory_analysis()
  temp = m.temp_size_in_bytes
  return temp / 1e6, (temp + m.argument_size_in_bytes + m.output_size_in_bytes) / 1e6


def _torch(q, k, v, w, threads, warmup, repeats):
  import torch
  import torch.nn.functional as F
  tq, tk, tv = (torch.from_numpy(np.asarray(x).transpose(0, 2, 1, 3).copy()).requires_grad_() for x in (q, k, v))
  tw = torch.from_numpy(np.asarray(w).transpose(0, 2, 1, 3).copy())

  def step():
    for x in (tq, tk, tv):
      x.grad = None
    out = F.scaled_dot_product_attention(tq, tk, tv)
    (out * tw).sum().backward()
    return out

  rec = {}
  for n in threads:
    torch.set_num_threads(n)
    out = step()
    key = "torch" if n == threads[0] else f"torch_{n}thr"
    t = common.time_calls(step, warmup, repeats)
    rec[f"{key}_s"], rec[f"{key}_best_s"] = t["median_s"], min(t["times_s"])
  got = [out.detach().numpy().transpose(0, 2, 1, 3)] + [x.grad.numpy().transpose(0, 2, 1, 3) for x in (tq, tk, tv)]
  return rec, got


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--lengths", default="400,1357,4096")
  p.add_argument("--heads", type=int, default=24)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--chunks", default="512", help="comma-separated blockwise chunk sizes")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--torch_threads", default="2", help="comma-separated torch thread counts; empty: no torch")
  a = p.parse_args()
  impls = {"xla": ("xla", 512)} | {f"blockwise_c{c}": ("blockwise", int(c)) for c in a.chunks.split(",")}
  for t in (int(x) for x in a.lengths.split(",")):
    keys = jax.random.split(jax.random.key(t), 4)
    q, k, v, w = (jax.random.normal(key, (a.batch, t, a.heads, a.head_dim)) for key in keys)
    rec = {"bench": "attention", "tokens": t, "heads": a.heads, "head_dim": a.head_dim, "batch": a.batch}
    calls, results = {}, {}
    for name, (impl, chunk) in impls.items():
      compiled, rec[f"{name}_compile_s"] = common.compile_jax(_program(impl, chunk), q, k, v, w)
      rec[f"{name}_temp_mb"], rec[f"{name}_peak_mb"] = _memory(compiled)
      results[name] = jax.tree.leaves(common.block(compiled(q, k, v, w)))
      calls[name] = lambda c=compiled: common.block(c(q, k, v, w))
    for name, timing in common.time_interleaved(calls, a.warmup, a.repeats).items():
      rec[f"{name}_s"], rec[f"{name}_best_s"] = timing["median_s"], timing["best_s"]
    ref = results["xla"][1:]  # dq, dk, dv
    diff = lambda got, ref: max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(got, ref))
    for name in impls:
      if name != "xla":
        rec[f"{name}_max_abs_diff"] = diff(results[name][1:], ref)
    threads = [int(n) for n in a.torch_threads.split(",") if n]
    if threads:
      try:
        import torch  # noqa: F401
      except ImportError:
        rec["torch"] = "not installed"
      else:
        out = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, implementation="xla"))(q, k, v)
        torch_rec, got = _torch(q, k, v, w, threads, a.warmup, a.repeats)
        rec |= torch_rec | {"torch_max_abs_diff": diff(got, [out] + ref)}
    rec.update(common.env_info())
    common.emit(rec)


if __name__ == "__main__":
  main()
