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

Variants: `--targets=grid` trains on the eval grid's own nine targets (other prompts and noise);
`--arousal_weight=W` weighs |dA| by W in the L1 loss (where the split between the axes lands); `--lora_rank=R`
also trains LoRA adapters on the MMDiT's attention (alpha `--lora_alpha`), as the main job's `model.lora` does;
`--grids=DIR` writes the eval grid's images at each evaluation. Each line also carries the eval grid's PickScore /
37.5 (the main job's eval/pickscore: 0.84 at the start), which falls when the images stop being pictures.
"""
import argparse
import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emojax import config_utils as cu
from emojax.data import emoshapes
from emojax.emotion import colour
from emojax.evaluation.training_eval import EvalSet
from emojax.models import lora as lora_lib
from emojax.pipelines import policy as policy_lib
from emojax.pipelines import tiny
from emojax.rewards.clip_scores import PickScoreReward


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
  ap.add_argument("--targets", choices=("uniform", "grid"), default="uniform",
                  help="training V-A: uniform on [-3, 3]^2 (the main job's) or the eval grid's {-2.4, 0, 2.4}^2")
  ap.add_argument("--arousal_weight", type=float, default=1.0, help="L1 loss |dV| + W |dA| (l1 only)")
  ap.add_argument("--lora_rank", type=int, default=0, help="also train LoRA on the MMDiT's attention (0: off)")
  ap.add_argument("--lora_alpha", type=float, default=16.0)
  ap.add_argument("--grids", default="", help="existing directory for the eval grid's PNG at each evaluation")
  args = ap.parse_args()
  if min(args.steps, args.batch, args.every) < 1 or args.lr <= 0 or args.arousal_weight <= 0 or args.lora_rank < 0:
    ap.error("--steps, --batch and --every must be >= 1, --lr and --arousal_weight > 0, --lora_rank >= 0")
  if args.arousal_weight != 1.0 and args.distance != "l1":
    ap.error("--arousal_weight weighs the L1 loss; use it with --distance=l1")

  p = policy_lib.load(args.generator, "tiny")
  preference = PickScoreReward.from_config(cu.preference_model(scale=37.5))  # the main job's eval/pickscore
  eval_set = EvalSet(p, num_prompts=16, seed=12345, num_steps=8, shift=3.0, cfg_scale=1.0, preference=preference)
  lora = lora_lib.grpo_config(cu.lora(rank=args.lora_rank, alpha=args.lora_alpha))  # None at rank 0
  params = p.params if lora is None else lora_lib.with_adapters(p.params, p.adapted_group, lora, jax.random.key(args.seed))
  trained = ("emotion",) if lora is None else ("emotion", lora_lib.GROUP)
  frozen = {g: w for g, w in params.items() if g not in trained}

  def evaluate(step, train):
    merged = {**frozen, **train}
    merged = merged if lora is None else lora_lib.merge_group(merged, p.adapted_group, lora)
    m = eval_set(merged, f"{args.grids}/step_{step:04d}.png" if args.grids else None)
    return m["eval/v_abs_err"], m["eval/a_abs_err"], m["eval/pickscore"]

  uncond = p.tok([""] * args.batch)

  def loss(train, ids, va, key):
    adapters = contextlib.nullcontext() if lora is None else lora_lib.enabled(train[lora_lib.GROUP], lora,
                                                                              root=p.lora_root)
    with adapters:
      images = tiny.generate(p.gen, {**frozen, "emotion": train["emotion"]}, ids, uncond, va, key, num_steps=8,
                             shift=3.0, cfg_scale=1.0)
    dv, da = (x - t for x, t in zip(colour.colour_judge(images), va.T))
    if args.distance == "l1":
      per_image = jnp.abs(dv) + args.arousal_weight * jnp.abs(da)
    else:
      per_image = jnp.sqrt(dv * dv + da * da + 1e-12)
    return jnp.mean(per_image)

  grad = jax.jit(jax.grad(loss))
  opt = optax.adam(args.lr)
  train = {g: params[g] for g in trained}
  state = opt.init(train)
  prompts = [emoshapes.make_example(2, i)["prompt"] for i in range(2000)]
  grid = np.unique(eval_set.va[:, 0])  # the eval grid's values per axis
  rng, key = np.random.default_rng(args.seed), jax.random.key(args.seed)
  v0, a0, ps0 = evaluate(0, train)
  print(json.dumps({"step": 0, "eval_v_abs_err": round(v0, 4), "eval_a_abs_err": round(a0, 4),
                    "eval_pickscore": round(ps0, 3)}), flush=True)
  for step in range(1, args.steps + 1):
    ids = p.tok([prompts[j] for j in rng.integers(0, len(prompts), args.batch)])
    if args.targets == "uniform":
      va = rng.uniform(-3.0, 3.0, (args.batch, 2))
    else:
      va = rng.choice(grid, (args.batch, 2))
    key, k = jax.random.split(key)
    updates, state = opt.update(grad(train, ids, jnp.asarray(va, jnp.float32), k), state, train)
    train = optax.apply_updates(train, updates)
    if step % args.every == 0 or step == args.steps:
      v, a, ps = evaluate(step, train)
      print(json.dumps({"step": step, "eval_v_abs_err": round(v, 4), "eval_a_abs_err": round(a, 4),
                        "v_change": f"{(v / v0 - 1) * 100:+.0f}%", "a_change": f"{(a / a0 - 1) * 100:+.0f}%",
                        "eval_pickscore": round(ps, 3)}), flush=True)


if __name__ == "__main__":
  main()
