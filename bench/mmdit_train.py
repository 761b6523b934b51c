"""MMDiT forward + backward at SD3.5-Medium width: emojax's jitted value_and_grad vs diffusers' eager backward.

  python -m bench.mmdit_train                                  # fp32, torch at 2 and 1 threads
  python -m bench.mmdit_train --dtype=bf16
  python -m bench.mmdit_train --attention=blockwise --forward  # also time the forward alone

Default shape: SD3.5-Medium's joint blocks cut to --layers=2 (width 1536 = 24 heads x 64, rms qk-norm, block 0
with the SD3.5 dual image-only attention, the last block context-pre-only as in every SD3 model), joint attention
dim 4096, pooled dim 2048, patch 2, 16 latent channels, a 32x32 latent (256 image tokens), 160 text tokens,
batch 2, pos_embed_max_size 384 (SD3.5-M's; the (1, 384², 1536) table is a 0.9 GB buffer on each side). One
random-weight emojax MMDiT (bench.common.random_params); diffusers' SD3Transformer2DModel gets the same weights
(bench.rollout.torch_transformer). Inputs random; timestep 500 for every row.

The timed step, both sides: loss = sum(out * w) for a fixed random w, and its gradient w.r.t. every parameter
(the pos-embed table excepted: a buffer in diffusers, stop-gradient in emojax). emojax: one AOT-compiled
jax.jit(jax.value_and_grad(loss)), params fp32; --dtype=bf16 computes in bf16 (MMDiT(dtype=bf16,
param_dtype=fp32): params cast per op), loss in fp32. torch: eager forward, loss.backward(), grads set to None
before each step; --dtype=bf16 runs the forward under torch.autocast("cpu", dtype=torch.bfloat16), params fp32.
Every implementation (emojax, torch at each --torch_threads count, and with --forward the forward-only programs:
emojax jitted forward, torch under no_grad) is timed round-robin in one process after --warmup untimed rounds;
medians of --repeats (`*_s`) and bests (`*_best_s`).

Keys: `emojax_s`, `torch_s` (2 threads) / `torch_<n>thr_s`, `ratio_vs_torch` = the fastest torch thread count's
median / emojax's (> 1: emojax faster), `torch_best_threads`; `compile_s` (trace + lower + compile);
`loss_abs_diff` / `loss_rel_diff` (the two losses), `grad_rel_diff` = ||g_emojax - g_torch|| / ||g_torch|| over all
gradients together, `grad_max_rel_diff` the worst tensor's (and its name); `gflop_fwd` (common.forward_flops),
`gflop_step_est` = 3 x forward (backward ~ 2 forwards), `*_gflop_per_s`; `xla_temp_mb` (memory_analysis),
`xla_gflop` (XLA's cost analysis of the step), `xla_dots` (dots / convolutions by dtype, bench.sd3_pipeline) and
`xla_ops` (convert / transpose / copy / while counts over the optimised HLO, fused computations included);
`attention_resolved` = what --attention=auto picks for the joint and the dual attention at this length.

In bf16 every Dense of the MMDiT runs emojax.models.dense's bf16 x bf16 -> f32 dots (forward and backward).
"""
import argparse
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bench import common
from bench.rollout import torch_transformer
from bench.sd3_pipeline import xla_dots
from emojax.models import attention as attention_lib
from emojax.models import mmdit
from emojax.models import remat as remat_lib

POS = ("pos_embed", "pos_embed")  # the sincos table: a buffer in diffusers, not trained


def config_of(a) -> mmdit.MMDiTConfig:
  dual = tuple(int(i) for i in a.dual_attention_layers.split(",") if i)
  return mmdit.MMDiTConfig(
      sample_size=a.latent, patch_size=a.patch, in_channels=a.channels, out_channels=a.channels,
      num_layers=a.layers, attention_head_dim=a.head_dim, num_attention_heads=a.heads,
      joint_attention_dim=a.joint_attention_dim, caption_projection_dim=a.heads * a.head_dim,
      pooled_projection_dim=a.pooled_projection_dim, pos_embed_max_size=a.pos_embed_max_size,
      dual_attention_layers=dual, qk_norm=None if a.qk_norm == "none" else a.qk_norm)


def split_pos(params):
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if k != POS}), flat[POS]


def join_pos(trainable, table):
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(trainable), POS: table})


def xla_ops(hlo: str) -> dict:
  """Counts of a few opcodes over the whole optimised HLO module (fused computations included)."""
  ops = collections.Counter(re.findall(r"= \S+\[[^\]]*\]\S* (convert|transpose|copy|while)\(", hlo))
  return {op: ops.get(op, 0) for op in ("convert", "transpose", "copy", "while")}


def resolved_attention(config, impl: str, context_len: int) -> dict:
  """What attention.dot_product_attention runs for the joint (image + text) and dual (image) attention."""
  if impl != "auto":
    return {"joint": impl, "dual": impl}
  n_img = (config.sample_size // config.patch_size) ** 2
  pick = lambda n: "xla" if n < attention_lib.AUTO_MIN_TOKENS["cpu"] else "blockwise"  # cpu: no splash / cudnn
  return {"joint": pick(n_img + context_len), "dual": pick(n_img) if config.dual_attention_layers else None}


def emojax_fns(model, dtype):
  def forward(trainable, table, x, ctx, pooled, t):
    out = model.apply({"params": join_pos(trainable, table)}, x.astype(dtype), ctx.astype(dtype),
                      pooled.astype(dtype), t)
    return out.astype(jnp.float32)

  def loss(trainable, table, x, ctx, pooled, t, w):
    return jnp.sum(forward(trainable, table, x, ctx, pooled, t) * w)

  return forward, jax.value_and_grad(loss)


def torch_fns(config, params, x, ctx, pooled, t, w, dtype_name):
  """(train step -> loss, forward, {diffusers name: grad} of the last step) with the same weights and inputs."""
  import torch
  model = torch_transformer(config, params).train()
  named = dict(model.named_parameters())
  nchw = lambda a: torch.from_numpy(np.asarray(a, np.float32).transpose(0, 3, 1, 2).copy())
  xt, wt = nchw(x), nchw(w)
  ctx_t, pooled_t = (torch.from_numpy(np.array(a, np.float32)) for a in (ctx, pooled))
  tt = torch.from_numpy(np.array(t, np.float32))
  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype_name == "bf16")

  def run():
    with autocast():
      out = model(hidden_states=xt, encoder_hidden_states=ctx_t, pooled_projections=pooled_t, timestep=tt,
                  return_dict=False)[0]
    return out.float()

  def step():
    model.zero_grad(set_to_none=True)
    loss = (run() * wt).sum()
    loss.backward()
    return float(loss.detach())

  def forward():
    with torch.no_grad():
      return run()

  grads = lambda: {n: p.grad.numpy() for n, p in named.items() if p.grad is not None}
  return step, forward, grads, len(named)


def compare_grads(g_emojax: dict, g_torch: dict) -> dict:
  num = den = 0.0
  worst, worst_name = 0.0, None
  for name, gt in g_torch.items():
    ge = g_emojax[name].astype(np.float64)
    gt = gt.astype(np.float64)
    d, n = float(np.sum((ge - gt) ** 2)), float(np.sum(gt ** 2))
    num, den = num + d, den + n
    rel = (d / n) ** 0.5 if n > 0 else (0.0 if d == 0 else float("inf"))
    if rel > worst:
      worst, worst_name = rel, name
  return {"grad_rel_diff": (num / den) ** 0.5, "grad_max_rel_diff": worst, "grad_max_rel_diff_param": worst_name}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", type=int, default=2, help="joint transformer blocks (SD3.5-M: 24)")
  p.add_argument("--heads", type=int, default=24)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--qk_norm", default="rms_norm", choices=("rms_norm", "none"))
  p.add_argument("--dual_attention_layers", default="0", help="comma list of blocks with SD3.5 dual attention")
  p.add_argument("--joint_attention_dim", type=int, default=4096)
  p.add_argument("--pooled_projection_dim", type=int, default=2048)
  p.add_argument("--patch", type=int, default=2)
  p.add_argument("--channels", type=int, default=16, help="latent in/out channels")
  p.add_argument("--latent", type=int, default=32, help="latent side (32: 256 image tokens at patch 2)")
  p.add_argument("--pos_embed_max_size", type=int, default=384, help="SD3.5-M: 384")
  p.add_argument("--context_len", type=int, default=160, help="text tokens")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--dtype", default="fp32", choices=sorted(common.DTYPES), help="compute dtype (params fp32)")
  p.add_argument("--attention", default="auto", choices=attention_lib.BACKEND_IMPLEMENTATIONS["cpu"],
                 help="emojax's attention implementation (MMDiT(attention=...))")
  p.add_argument("--remat", default="none", choices=remat_lib.NAMES, help="emojax joint-block remat")
  p.add_argument("--forward", action="store_true", help="also time the forward alone on both sides")
  p.add_argument("--torch_threads", default="2,1", help="comma list of torch.set_num_threads values (2 -> "
                 "unsuffixed keys, others _<n>thr); empty: emojax only")
  p.add_argument("--warmup", type=int, default=1, help="untimed rounds")
  p.add_argument("--repeats", type=int, default=3, help="timed rounds; medians reported")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()

  config = config_of(a)
  dtype = common.DTYPES[a.dtype]
  model = mmdit.MMDiT(config, dtype=dtype, param_dtype=jnp.float32, remat=a.remat, attention=a.attention)
  k_params, k_in, k_w = jax.random.split(jax.random.key(a.seed), 3)
  params = common.random_params(config, k_params)
  trainable, table = split_pos(params)
  x, ctx, pooled = common.inputs(config, a.batch, a.context_len, k_in)
  t = jnp.full((a.batch,), 500.0, jnp.float32)
  w = jax.random.normal(k_w, (a.batch, config.sample_size, config.sample_size, config.out_channels))
  forward, step = emojax_fns(model, dtype)

  rec = {"bench": "mmdit_train", "dtype": a.dtype, "batch": a.batch, "layers": a.layers, "width": config.inner_dim,
         "image_tokens": (a.latent // a.patch) ** 2, "context_len": a.context_len,
         "pos_embed_max_size": a.pos_embed_max_size, "attention": a.attention, "remat": a.remat,
         "attention_resolved": resolved_attention(config, a.attention, a.context_len),
         "params_m": common.num_params(trainable) / 1e6}
  args = (trainable, table, x, ctx, pooled, t)
  compiled, rec["compile_s"] = common.compile_jax(step, *args, w)
  hlo = compiled.as_text()
  rec["xla_dots"], rec["xla_ops"] = xla_dots(hlo), xla_ops(hlo)
  mem = compiled.memory_analysis()
  if mem is not None:
    rec["xla_temp_mb"] = mem.temp_size_in_bytes / 2**20
  xf = common.xla_flops(compiled)
  rec["xla_gflop"] = None if xf is None else xf / 1e9
  loss_e, grads_e = common.block(compiled(*args, w))
  calls = {"emojax": lambda: common.block(compiled(*args, w))}
  if a.forward:
    fwd, rec["compile_fwd_s"] = common.compile_jax(forward, *args)
    calls["emojax_fwd"] = lambda: common.block(fwd(*args))

  threads = [int(n) for n in a.torch_threads.split(",") if n]
  if threads:
    import torch
    t_step, t_fwd, t_grads, n_named = torch_fns(config, params, x, ctx, pooled, t, w, a.dtype)
    torch.set_num_threads(threads[0])
    loss_t = t_step()
    g_t = t_grads()
    g_e = mmdit.to_diffusers_state_dict(jax.device_get(grads_e))  # same layout conversion as weights
    rec["loss"], rec["loss_abs_diff"] = float(loss_e), abs(float(loss_e) - loss_t)
    rec["loss_rel_diff"] = rec["loss_abs_diff"] / max(abs(loss_t), 1e-30)
    rec |= compare_grads(g_e, g_t)
    rec["torch_params_without_grad"] = n_named - len(g_t)
    del g_t, g_e

    def with_threads(fn, n):
      def call():
        torch.set_num_threads(n)
        return fn()
      return call

    for n in threads:
      tag = "" if n == 2 else f"_{n}thr"
      calls["torch" + tag] = with_threads(t_step, n)
      if a.forward:
        calls["torch_fwd" + tag] = with_threads(t_fwd, n)
    rec["torch"] = torch.__version__
  else:
    rec["loss"] = float(loss_e)
  del grads_e

  times = common.time_interleaved(calls, a.warmup, a.repeats)
  for name, tm in times.items():
    rec[f"{name}_s"], rec[f"{name}_best_s"] = tm["median_s"], tm["best_s"]
  rec["times_s"] = {name: tm["times_s"] for name, tm in times.items()}
  torch_keys = [k for k in times if k.startswith("torch") and not k.startswith("torch_fwd")]
  if torch_keys:
    best = min(torch_keys, key=lambda k: times[k]["median_s"])
    rec["torch_best_threads"] = 2 if best == "torch" else int(best[len("torch_"):-len("thr")])
    rec["ratio_vs_torch"] = times[best]["median_s"] / times["emojax"]["median_s"]
  if a.forward:
    fwd_keys = [k for k in times if k.startswith("torch_fwd")]
    if fwd_keys:
      rec["ratio_fwd_vs_torch"] = min(times[k]["median_s"] for k in fwd_keys) / times["emojax_fwd"]["median_s"]
    for name in [k for k in times if "fwd" not in k]:  # a step in forwards: ~3 when the backward is 2 forwards
      side, _, tag = name.partition("_")
      rec[f"{name}_step_over_fwd"] = times[name]["median_s"] / times[f"{side}_fwd" + (f"_{tag}" if tag else "")]["median_s"]
  flops_fwd = common.forward_flops(config, a.batch, a.context_len)
  rec["gflop_fwd"], rec["gflop_step_est"] = flops_fwd / 1e9, 3 * flops_fwd / 1e9
  for name, tm in times.items():
    per = flops_fwd if "fwd" in name else 3 * flops_fwd
    rec[f"{name}_gflop_per_s"] = per / tm["median_s"] / 1e9
  rec.update(common.env_info())
  common.emit(rec)


if __name__ == "__main__":
  main()
