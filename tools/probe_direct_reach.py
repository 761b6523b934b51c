"""How far a generator's V-A embedding can move the colour judge's errors with exact gradients: the ceiling a
GRPO run of the main job (which trains only that embedding) could reach with a noise-free reward gradient.

  python tools/probe_direct_reach.py                    # the shipped tiny generator, 100 steps of 32
  python tools/probe_direct_reach.py --generator=RUN/export --steps=50

Each step samples neutral prompts of EmoShapes world 2 at V-A targets uniform on [-3, 3]^2 (the main job's
training distribution) with the main job's 8-step ODE, and takes an Adam step on the emotion group down the
colour judge's mean |dV| + |dA| (or, `--distance=l2`, the Euclidean error; backpropagated through the sampler); every `--every` steps it prints one JSON
line with the main job's eval-grid errors (16 held-out prompts x the 3x3 grid at +-2.4, fixed noise) and their
change from the start. On the 2-core Intel Xeon (AVX-512/AMX), the shipped generator, seeds 0 / 1 (about 4
minutes each): -18% / -21% at step 25 on both; at step 100 -51% / -17% and -47% / +0% (l1), -51% / -12% and
-44% / -14% (l2). GRPO with the colour judge as its reward (120 steps of 32 samples) ends between -10% / -1% and
-20% / -17% over seeds, or diverges (README, Status).
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emojax.data import emoshapes
from emojax.emotion import colour
from emojax.evaluation.generator import EvalSet
from emojax.pipelines import policy as policy_lib
from emojax.pipelines import tiny


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--generator", default="", help="tiny generator directory ('' = the shipped one)")
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--every", type=int, default=25, help="evaluate every this many steps")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--distance", choices=("l1", "l2"), default="l1",
                  help="the loss per image: |dV| + |dA| or sqrt(dV^2 + dA^2) (rewards.emotion_distance)")
  args = ap.parse_args()
  if min(args.steps, args.batch, args.every) < 1 or args.lr <= 0:
    raise SystemExit("--steps, --batch and --every must be >= 1 and --lr > 0")

  p = policy_lib.load(args.generator, "tiny")
  eval_set = EvalSet(p, num_prompts=16, seed=12345, num_steps=8, shift=3.0, cfg_scale=1.0)

  def eval_errors(params):
    m = eval_set(params)
    return m["eval/v_abs_err"], m["eval/a_abs_err"]

  rest = {g: w for g, w in p.params.items() if g != "emotion"}
  uncond = p.tok([""] * args.batch)

  def loss(emotion, ids, va, key):
    images = tiny.generate(p.gen, {**rest, "emotion": emotion}, ids, uncond, va, key, num_steps=8, shift=3.0,
                           cfg_scale=1.0)
    dv, da = (x - t for x, t in zip(colour.colour_judge(images), va.T))
    per_image = jnp.abs(dv) + jnp.abs(da) if args.distance == "l1" else jnp.sqrt(dv * dv + da * da + 1e-12)
    return jnp.mean(per_image)

  grad = jax.jit(jax.grad(loss))
  opt = optax.adam(args.lr)
  emotion = p.params["emotion"]
  state = opt.init(emotion)
  prompts = [emoshapes.make_example(2, i)["prompt"] for i in range(2000)]
  rng, key = np.random.default_rng(args.seed), jax.random.key(args.seed)
  v0, a0 = eval_errors(p.params)
  print(json.dumps({"step": 0, "eval_v_abs_err": round(v0, 4), "eval_a_abs_err": round(a0, 4)}), flush=True)
  for step in range(1, args.steps + 1):
    ids = p.tok([prompts[j] for j in rng.integers(0, len(prompts), args.batch)])
    va = jnp.asarray(rng.uniform(-3.0, 3.0, (args.batch, 2)), jnp.float32)
    key, k = jax.random.split(key)
    updates, state = opt.update(grad(emotion, ids, va, k), state, emotion)
    emotion = optax.apply_updates(emotion, updates)
    if step % args.every == 0 or step == args.steps:
      v, a = eval_errors({**rest, "emotion": emotion})
      print(json.dumps({"step": step, "eval_v_abs_err": round(v, 4), "eval_a_abs_err": round(a, 4),
                        "v_change": f"{(v / v0 - 1) * 100:+.0f}%", "a_change": f"{(a / a0 - 1) * 100:+.0f}%"}),
            flush=True)


if __name__ == "__main__":
  main()
