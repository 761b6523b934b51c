"""Reference check: diffusers reads a generator export's transformer/ and computes what emojax computes.

  pip install -e .[reference]
  python tools/check_export_diffusers.py                 # the shipped tiny generator, exported to a temp dir
  python tools/check_export_diffusers.py --export=WORKDIR/export

Loads `<export>/transformer` with `diffusers.SD3Transformer2DModel.from_pretrained` (fp32), runs it and
emojax's MMDiT (from the export's params.safetensors, the tree the generator jobs train) on the same
random noise, context, pooled vector and timesteps, and prints one JSON line with the largest absolute
difference of the velocities. Needs torch and diffusers, so it is a tool, not a test; the tests check
the files (tests/test_resume_export.py) and the weight mapping against diffusers' goldens
(tests/test_mmdit.py).
"""
import argparse
import json
import os
import tempfile

import jax
import numpy as np
import torch
from diffusers import SD3Transformer2DModel

from emojax.models import mmdit
from emojax.pipelines import tiny


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--export", default="", help="a generator export directory ('' = export the shipped asset first)")
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--context_len", type=int, default=12)
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    export = args.export
    if not export:
      _, gcfg, params = tiny.load_generator("")
      export = os.path.join(tmp, "export")
      tiny.export_generator(export, gcfg, params)
    _, gcfg, params = tiny.load_generator(export)
    ref = SD3Transformer2DModel.from_pretrained(os.path.join(export, "transformer"), torch_dtype=torch.float32).eval()
    c = gcfg.mmdit
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, c.sample_size, c.sample_size, c.in_channels)).astype(np.float32)
    ctx = rng.standard_normal((args.batch, args.context_len, c.joint_attention_dim)).astype(np.float32)
    pooled = rng.standard_normal((args.batch, c.pooled_projection_dim)).astype(np.float32)
    t = np.linspace(950.0, 20.0, args.batch).astype(np.float32)
    ours = np.asarray(jax.jit(lambda p: mmdit.MMDiT(c).apply({"params": p}, x, ctx, pooled, t))(params["mmdit"]))
    with torch.inference_mode():
      theirs = ref(hidden_states=torch.from_numpy(x).permute(0, 3, 1, 2), encoder_hidden_states=torch.from_numpy(ctx),
                   pooled_projections=torch.from_numpy(pooled), timestep=torch.from_numpy(t)).sample
    theirs = theirs.permute(0, 2, 3, 1).numpy()
    print(json.dumps({"export": export, "diffusers_class": type(ref).__name__,
                      "max_abs_diff": float(np.abs(ours - theirs).max()), "max_abs_velocity": float(np.abs(ours).max())}))


if __name__ == "__main__":
  main()
