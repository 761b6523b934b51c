"""Whole SD3 generation (prompt encoding + CFG Euler denoising + VAE decode): emojax vs diffusers, same weights.

  python -m bench.sd3_pipeline --dtype=fp32 --torch
  python -m bench.sd3_pipeline --dtype=bf16 --torch
  python -m bench.sd3_pipeline --dtype=fp32 --torch --torch_threads=2,1 --batch=4 --steps=8

Both sides read the small random-weight SD3.5 directory tests/goldens/sd3_pipeline/ (32x32 images, latents
(B, 8, 8, 16) NHWC in emojax, NCHW in diffusers; CLIP-L/G + T5 text encoders) and generate B prompts with
negatives, CFG 4.5, T5 length 24, from the same latents. emojax: `SD3Pipeline.from_pretrained(dir, dtype=...)`
then `generate_unit` (numpy images, so the call blocks); diffusers: `StableDiffusion3Pipeline.from_pretrained(
dir, torch_dtype=...)` called with output_type="np" under inference_mode. `*_first_call_s` is the first call
(emojax: includes jit compilation); then --warmup untimed rounds and --repeats timed rounds, all pipelines
round-robin so they share the background load; medians (`*_s`) and bests. `max_abs_diff` = emojax vs diffusers
images at --dtype. For bf16 the fp32 pipelines run in the same rounds too: `*_fp32_s`, `bf16_over_fp32_*` and
`*_vs_fp32_max_abs_diff` (against diffusers fp32). `xla_dots` counts the dots / convolutions of the compiled
sampler by operand dtypes (what XLA CPU actually runs for bf16).
"""
import argparse
import collections
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from emojax.pipelines import sd3

PIPELINE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens" / "sd3_pipeline"
PROMPTS = ["a red circle in the center", "two bright yellow stars on a gloomy pale sky", "a photo of a cat",
           "a calm green ring on a grey background"]
NEGATIVES = ["", "a dark blue square", "an empty street at night", ""]
T5_LEN, CFG = 24, 4.5


def cpu_flags() -> dict:
  try:
    with open("/proc/cpuinfo") as f:
      flags = set(next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), []))
  except OSError:
    flags = set()
  return {k: k in flags for k in ("avx512f", "avx512_bf16", "amx_bf16")}


def xla_dots(hlo: str) -> dict:
  """{"dot bf16,bf16->f32": n, ...}: every dot / convolution of an HLO module by operand and result dtypes."""
  types = dict(re.findall(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[", hlo, re.M))
  ops = re.findall(r"= (\w+)\[[^=]*? (dot|convolution)\(%([\w.\-]+), %([\w.\-]+)\)", hlo)
  count = collections.Counter(f"{op} {types.get(a, '?')},{types.get(b, '?')}->{out}" for out, op, a, b in ops)
  return dict(sorted(count.items()))


def param_dtypes(pipe) -> dict:
  trees = {"transformer": pipe.transformer_params, "vae": pipe.vae_params, "clip_l": pipe.clip[0][1],
           "clip_g": pipe.clip[1][1], "t5": pipe.t5[1] if pipe.t5 else {}}
  return {k: ",".join(sorted({str(x.dtype) for x in jax.tree.leaves(t)})) for k, t in trees.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--pipeline", default=str(PIPELINE), help="diffusers SD3 pipeline directory")
  p.add_argument("--dtype", default="fp32", choices=sorted(common.DTYPES))
  p.add_argument("--batch", type=int, default=2, help="prompts per generation")
  p.add_argument("--steps", type=int, default=2, help="denoising steps")
  p.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first call")
  p.add_argument("--repeats", type=int, default=5, help="timed rounds; medians reported")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--torch", action="store_true", help="also time diffusers' StableDiffusion3Pipeline")
  p.add_argument("--torch_threads", default="2", help="comma list of torch.set_num_threads values; 2 (= the "
                 "cores XLA uses) gives unsuffixed keys, others a _<n>thr suffix")
  a = p.parse_args()
  prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.batch)]
  negatives = [NEGATIVES[i % len(NEGATIVES)] for i in range(a.batch)]
  dtypes = [a.dtype] + (["fp32"] if a.dtype != "fp32" else [])  # bf16: the fp32 pipelines as reference
  tag = lambda dt: "" if dt == a.dtype else "_fp32"

  calls, first, images, pipes = {}, {}, {}, {}
  for dt in dtypes:
    pipe = pipes[dt] = sd3.SD3Pipeline.from_pretrained(a.pipeline, dtype=common.DTYPES[dt])
    if dt == dtypes[0]:
      tc = pipe.transformer.config
      size = pipe.default_size
      lat = np.random.default_rng(a.seed).standard_normal(
          (a.batch, tc.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)).astype(np.float32)
      lat_nhwc = np.ascontiguousarray(lat.transpose(0, 2, 3, 1))
    calls["jax" + tag(dt)] = lambda pipe=pipe: pipe.generate_unit(
        prompts, negatives, lat_nhwc, num_steps=a.steps, guidance_scale=CFG, height=size, width=size,
        max_sequence_length=T5_LEN)
  rec = {"bench": "sd3_pipeline", "dtype": a.dtype, "batch": a.batch, "steps": a.steps, "guidance_scale": CFG,
         "image_size": size, "jax_param_dtypes": param_dtypes(pipes[a.dtype]),
         "jax_compute_dtype": jnp.dtype(pipes[a.dtype].transformer.dtype).name}

  if a.torch:
    import diffusers
    import torch
    threads = [int(n) for n in a.torch_threads.split(",")]
    for dt in dtypes:
      tpipe = diffusers.StableDiffusion3Pipeline.from_pretrained(
          a.pipeline, torch_dtype=torch.bfloat16 if dt == "bf16" else torch.float32)
      tpipe.set_progress_bar_config(disable=True)
      for n in threads if dt == a.dtype else threads[:1]:
        def run(tpipe=tpipe, n=n):
          torch.set_num_threads(n)
          with torch.inference_mode():
            out = tpipe(prompts, negative_prompt=negatives, latents=torch.from_numpy(lat), num_inference_steps=a.steps,
                        guidance_scale=CFG, height=size, width=size, max_sequence_length=T5_LEN, output_type="np")
          return np.asarray(out.images, np.float32)
        calls["torch" + ("" if n == 2 else f"_{n}thr") + tag(dt)] = run
    rec.update(torch_threads=threads, torch=torch.__version__, diffusers=diffusers.__version__,
               torch_mkldnn=torch.backends.mkldnn.is_available(),
               torch_cpu_capability=torch.backends.cpu.get_cpu_capability())
    try:
      rec["torch_mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
      pass

  for name, call in calls.items():  # first calls (emojax: jit compilation of the text encoders and the sampler)
    t0 = time.perf_counter()
    images[name] = call()
    first[name] = time.perf_counter() - t0
  timing = common.time_interleaved(calls, a.warmup, a.repeats)
  for name in calls:
    rec[f"{name}_first_call_s"] = first[name]
    rec[f"{name}_s"], rec[f"{name}_best_s"] = timing[name]["median_s"], timing[name]["best_s"]
  for name in calls:
    if name.startswith("torch") and not name.endswith("_fp32"):
      rec["ratio_" + name + "_over_jax"] = timing[name]["median_s"] / timing["jax"]["median_s"]
  rec["images_shape"] = list(images["jax"].shape)
  if a.torch:
    torch0 = "torch" if 2 in threads else f"torch_{threads[0]}thr"
    rec["max_abs_diff"] = float(np.abs(images["jax"] - images[torch0]).max())
    if a.dtype != "fp32":
      ref = images[torch0 + "_fp32"]
      for name in ("jax", torch0, "jax_fp32"):
        rec[f"{name}_vs_fp32_max_abs_diff"] = float(np.abs(images[name] - ref).max())
  if a.dtype != "fp32":
    for name in [n for n in calls if n.endswith("_fp32")]:
      rec["bf16_over_fp32_" + name[:-5]] = timing[name[:-5]]["median_s"] / timing[name]["median_s"]

  pipe = pipes[a.dtype]  # the compiled sampler (denoising + VAE decode), as generate_unit calls it
  embeds = pipe.encode_prompt(prompts, negatives, T5_LEN)
  sigmas = jnp.asarray(sd3.schedule.sd3_sigmas(a.steps, pipe.shift))
  hlo = sd3._sample.lower(pipe.transformer, pipe.vae, True, pipe.transformer_params, pipe.vae_params,
                          jnp.asarray(lat_nhwc), sigmas, embeds, jnp.float32(CFG)).compile().as_text()
  rec["xla_dots"] = xla_dots(hlo)
  rec["xla_dot_library"] = next((lib for lib in ("onednn", "xnn", "ynn") if f"{lib}_fusion" in hlo), "eigen")
  rec.update(cpu_flags())
  rec.update(common.env_info())
  common.emit(rec)


if __name__ == "__main__":
  main()
