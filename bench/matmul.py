"""Plain matmul GFLOP/s: jax (XLA CPU) vs torch, and a sweep over XLA CPU options.

  python -m bench.matmul                 # this process's XLA_FLAGS; jax variants + torch
  python -m bench.matmul --sweep         # one subprocess per XLA_FLAGS candidate (jax only)

Shapes are MxKxN: (M, K) @ (K, N), 2·M·K·N FLOPs. Defaults: a square 1024³ and the "small"
MMDiT's per-layer shapes at batch 8 (2048 image tokens, width 512, MLP 2048). One JSON line per
process: GFLOP/s per (variant, shape), median and best of the repeats (best is the better
capability estimate on a shared machine), and which library XLA lowered the dot to.

jax variants: dot (x @ w, w (K, N) as flax Dense stores it); dense3d (flax Dense on (B, T, K),
a dot_general with batch dims folded into M); wT (x @ w.T, torch's Linear layout, transpose
folded into the dot); highest (dot under jax.default_matmul_precision("highest")); bf16
(bf16 in, bf16 out); bf16_f32 (bf16 in, preferred_element_type=f32).
torch variants: mm (fp32), linear (F.linear, weight (N, K)), bf16 (mm in bf16); run at each
--torch_threads count (output keys torch2, torch1).
"""
import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = "1024x1024x1024,2048x512x2048,2048x2048x512,2048x512x512"
JAX_VARIANTS = "dot,dense3d,wT,highest,bf16,bf16_f32"
TORCH_VARIANTS = "mm,linear,bf16"

# Candidate XLA CPU options for --sweep (checked against jaxlib 0.10.2's flag table; an unknown
# flag aborts the process at backend start, which the sweep records as "invalid").
SWEEP = {
    "default": "",
    "thunk_runtime_off": "--xla_cpu_use_thunk_runtime=false",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "no_ynn (eigen dot)": "--xla_cpu_experimental_ynn_fusion_type=",
    "onednn dot": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "xnn dot": ("--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=true "
                "--xla_cpu_experimental_xnn_fusion_type=dot"),
    "ynn dot+eltwise": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise",
    "concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "mkl_dnn (old name)": "--xla_cpu_use_mkl_dnn=true",
    "1 core (taskset -c 0)": "",  # the process pinned to one core, see TASKSET
}
TASKSET = {"1 core (taskset -c 0)": ["taskset", "-c", "0"]}


def _shapes(spec):
  return [tuple(int(v) for v in s.split("x")) for s in spec.split(",")]


def _time(call, warmup, repeats, budget_s=4.0):
  """(median, best) seconds; stops early once budget_s is spent (pathologically slow kernels)."""
  start = time.perf_counter()
  for _ in range(warmup):
    call()
    if time.perf_counter() - start > budget_s:
      break
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
    if t0 + times[-1] - start > 2 * budget_s:
      break
  times.sort()
  return times[len(times) // 2], times[0]


def _dot_library(hlo: str) -> str:
  for lib in ("onednn", "xnn", "ynn"):
    if f"{lib}_fusion" in hlo or f"__{lib}" in hlo:
      return lib
  return "eigen"


def bench_jax(shapes, variants, warmup, repeats):
  import jax
  import jax.numpy as jnp

  out, libs = {}, {}
  for m, k, n in shapes:
    kx, kw = jax.random.split(jax.random.key(0))
    x, w = jax.random.normal(kx, (m, k)), jax.random.normal(kw, (k, n))
    for v in variants:
      fn, args = {
          "dot": (jnp.dot, (x, w)),
          "dense3d": (lambda a, b: jnp.einsum("btk,kn->btn", a, b), (x.reshape(8, m // 8, k), w)),
          "wT": (lambda a, b: a @ b.T, (x, w.T.copy())),
          "highest": (jnp.dot, (x, w)),
          "bf16": (jnp.dot, (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))),
          "bf16_f32": (lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.float32),
                       (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))),
      }[v]
      with jax.default_matmul_precision("highest" if v == "highest" else None):
        compiled = jax.jit(fn).lower(*args).compile()
      med, best = _time(lambda: compiled(*args).block_until_ready(), warmup, repeats)
      key = f"{v}@{m}x{k}x{n}"
      out[key] = [round(2 * m * k * n / med / 1e9, 1), round(2 * m * k * n / best / 1e9, 1)]
      libs[key] = _dot_library(compiled.as_text())
  return out, libs


def bench_torch(shapes, variants, warmup, repeats, threads):
  import torch
  import torch.nn.functional as F

  torch.set_num_threads(threads)
  out = {}
  g = torch.Generator().manual_seed(0)
  for m, k, n in shapes:
    x, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    wt = w.T.contiguous()
    xb, wb = x.bfloat16(), w.bfloat16()
    for v in variants:
      call = {"mm": lambda: torch.mm(x, w), "linear": lambda: F.linear(x, wt),
              "bf16": lambda: torch.mm(xb, wb)}[v]
      with torch.inference_mode():
        med, best = _time(call, warmup, repeats)
      out[f"{v}@{m}x{k}x{n}"] = [round(2 * m * k * n / med / 1e9, 1), round(2 * m * k * n / best / 1e9, 1)]
  return out


def sweep(a):
  names = a.sweep_only.split(",") if a.sweep_only else list(SWEEP)
  for name in names:
    flags = SWEEP[name]
    env = {**os.environ, "XLA_FLAGS": flags}
    cmd = [sys.executable, "-m", "bench.matmul", f"--shapes={a.shapes}", f"--jax_variants={a.jax_variants}",
           "--torch_variants=", f"--warmup={a.warmup}", f"--repeats={a.repeats}"]
    r = subprocess.run(TASKSET.get(name, []) + cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode:
      err = (r.stderr.strip().splitlines() or ["?"])[-1][-160:]
      print(json.dumps({"sweep": name, "xla_flags": flags, "invalid": err}), flush=True)
    else:
      rec = json.loads(r.stdout.strip().splitlines()[-1])
      print(json.dumps({"sweep": name, **rec}), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shapes", default=SHAPES)
  p.add_argument("--jax_variants", default=JAX_VARIANTS)
  p.add_argument("--torch_variants", default=TORCH_VARIANTS)
  p.add_argument("--torch_threads", default="2,1", help="comma list; each gets its own 'torch<n>' entry")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--sweep", action="store_true", help="jax variants under each XLA_FLAGS candidate")
  p.add_argument("--sweep_only", default="", help="comma-separated subset of the SWEEP names")
  a = p.parse_args()
  if a.sweep:
    return sweep(a)
  shapes = _shapes(a.shapes)
  rec = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "loadavg_1m": round(os.getloadavg()[0], 2),
         "units": "GFLOP/s [median, best]"}
  if a.jax_variants:
    rec["jax"], rec["dot_library"] = bench_jax(shapes, a.jax_variants.split(","), a.warmup, a.repeats)
  if a.torch_variants:
    for n in a.torch_threads.split(","):
      rec[f"torch{n}"] = bench_torch(shapes, a.torch_variants.split(","), a.warmup, a.repeats, int(n))
  print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main()
