"""Shared bench helpers: configs, random params, analytic FLOPs, timing, JSON output."""
import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from emojax.models import mmdit

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}

CONFIGS = {
    "tiny": mmdit.PRESETS["tiny"],
    # SD3-shaped (latent 32x32x16, patch 2 -> 256 image tokens), 8 layers of width 512.
    "small": mmdit.MMDiTConfig(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=8, attention_head_dim=64,
        num_attention_heads=8, joint_attention_dim=512, caption_projection_dim=512, pooled_projection_dim=512,
        pos_embed_max_size=32, dual_attention_layers=(), qk_norm="rms_norm"),
}


def get_config(name_or_path: str) -> mmdit.MMDiTConfig:
  """A CONFIGS name, or a diffusers SD3Transformer2DModel config.json path."""
  if name_or_path in CONFIGS:
    return CONFIGS[name_or_path]
  if os.path.isfile(name_or_path):
    return mmdit.MMDiTConfig.from_json(name_or_path)
  raise ValueError(f"--config={name_or_path!r}: neither one of {sorted(CONFIGS)} nor a config.json file")


def parser(doc: str, batch: int, repeats: int = 3) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=doc)
  p.add_argument("--config", default="tiny", help=f"{sorted(CONFIGS)} or a diffusers config.json path")
  p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
  p.add_argument("--batch", type=int, default=batch)
  p.add_argument("--context_len", type=int, default=32, help="text tokens L of encoder_hidden_states")
  p.add_argument("--warmup", type=int, default=1, help="untimed runs after compilation")
  p.add_argument("--repeats", type=int, default=repeats, help="timed runs; the median is reported")
  p.add_argument("--seed", type=int, default=0)
  return p


# ------------------------------------------------------------------------------------------------ params


def random_params(config: mmdit.MMDiTConfig, key, dtype=jnp.float32):
  """Params shaped like MMDiT(config).init, built directly (no tracing of the model): kernels and
  embeddings N(0, 0.02²), biases 0, norm scales 1, the pos-embed table diffusers' sincos."""
  flat = traverse_util.flatten_dict(mmdit.param_shapes(config))
  paths = sorted(flat)

  def init(key):
    out = {}
    for path, k in zip(paths, jax.random.split(key, len(paths))):
      shape = flat[path].shape
      if path[-1] == "bias":
        w = jnp.zeros(shape)
      elif path[-1] == "scale":
        w = jnp.ones(shape)
      elif path[-1] == "pos_embed":
        w = mmdit.sincos_pos_embed_table(config)
      else:
        w = 0.02 * jax.random.normal(k, shape)
      out[path] = w.astype(dtype)
    return traverse_util.unflatten_dict(out)

  return jax.jit(init)(key)


def num_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def inputs(config: mmdit.MMDiTConfig, batch: int, context_len: int, key):
  """(x_init NHWC, context (B, L, joint_dim), pooled (B, pooled_dim)), float32 N(0, 1)."""
  k1, k2, k3 = jax.random.split(key, 3)
  s = config.sample_size
  return (jax.random.normal(k1, (batch, s, s, config.in_channels)),
          jax.random.normal(k2, (batch, context_len, config.joint_attention_dim)),
          jax.random.normal(k3, (batch, config.pooled_projection_dim)))


# ------------------------------------------------------------------------------------------------- FLOPs


def _rows(path, batch, n_img, n_ctx):
  """How many rows a Dense kernel at `path` multiplies in one forward."""
  names = set(path)
  if "context_embedder" in names or "ff_context" in names or any(
      n.startswith("add_") or n == "to_add_out" for n in names):
    return batch * n_ctx
  if names & {"time_text_embed", "norm1", "norm1_context", "norm_out"}:
    return batch  # per-sample embeddings and adaLN modulation
  return batch * n_img  # to_q/k/v/out, attn2, ff, proj_out, patch conv


def forward_flops(config: mmdit.MMDiTConfig, batch: int, context_len: int) -> float:
  """Analytic FLOPs of one MMDiT forward: 2·MACs of every Dense/Conv kernel times the rows it sees,
  plus attention 4·N²·D per joint layer (QKᵀ and AV, N = image + text tokens) and 4·N_img²·D per
  SD3.5 dual (image-only) attention. Elementwise ops, norms and softmax are not counted."""
  n_img = (config.sample_size // config.patch_size) ** 2
  n, d = n_img + context_len, config.inner_dim
  flops = 0.0
  for path, leaf in traverse_util.flatten_dict(mmdit.param_shapes(config)).items():
    if path[-1] == "kernel":  # Dense (in, out) or Conv (p, p, in, out): every entry is one MAC per row
      flops += 2 * int(np.prod(leaf.shape)) * _rows(path, batch, n_img, context_len)
  flops += batch * config.num_layers * 4 * n * n * d
  flops += batch * len(config.dual_attention_layers) * 4 * n_img * n_img * d
  return flops


def xla_flops(compiled) -> float | None:
  """XLA's own FLOP count of a compiled executable (None if the backend does not report it)."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])
  except Exception:  # noqa: BLE001 - best effort, version dependent
    return None


# ------------------------------------------------------------------------------------------------ timing


def block(tree):
  return jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def compile_jax(fn, *args, **jit_kwargs):
  """AOT-compiles jax.jit(fn, **jit_kwargs) for args; returns (compiled, compile_s), compile_s =
  trace + lower + compile (no persistent compilation cache is configured here)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
  return compiled, time.perf_counter() - t0


def time_calls(call, warmup: int, repeats: int) -> dict:
  """Runs call() warmup + repeats times (call must block); median and all timed seconds."""
  for _ in range(warmup):
    call()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "times_s": [round(t, 4) for t in times]}


def time_interleaved(calls: dict, warmup: int, repeats: int) -> dict:
  """time_calls for several callables, round-robin (one timed call of each per round), so that all
  see the same background load; {name: {"median_s", "best_s", "times_s"}}."""
  for _ in range(warmup):
    for call in calls.values():
      call()
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      t0 = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - t0)
  return {name: {"median_s": statistics.median(t), "best_s": min(t), "times_s": [round(x, 4) for x in t]}
          for name, t in times.items()}


def time_jax(compiled, *args, warmup=1, repeats=3) -> dict:
  return time_calls(lambda: block(compiled(*args)), warmup, repeats)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
  except OSError:
    return "unknown"


def env_info() -> dict:
  return {"jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(), "cpu": cpu_model(),
          "loadavg_1m": round(os.getloadavg()[0], 2), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def emit(record: dict):
  """Prints the single JSON result line."""
  def fix(v):
    if isinstance(v, float):  # 4 significant digits: small differences stay visible
      return float(f"{v:.4g}")
    if isinstance(v, dict):
      return {k: fix(x) for k, x in v.items()}
    return v
  print(json.dumps({k: fix(v) for k, v in record.items()}), flush=True)
