"""Which prompt words a generator uses: flow-matching loss on held-out EmoShapes images under edited prompts.

  python tools/probe_text_use.py                       # the shipped tiny generator
  python tools/probe_text_use.py --generator=DIR --num_images=128 --sigmas=0.5,0.7,0.9

For each sigma prints two JSON lines of mean losses (fixed noise, emotion input zero), over all pixels
and over shape pixels only: the image's own emotional prompt; every place phrase moved to another
cell; every shape name swapped for another; background words only; the empty prompt. A generator
that draws what the prompt says loses when a word is edited; equal losses mean the words are ignored.
"""
import argparse
import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from emojax import sampling
from emojax.data import emoshapes
from emojax.tasks import generator_common as common


def edited_prompts(prompts, seed: int = 0) -> dict[str, list[str]]:
  rng = np.random.default_rng(seed)
  places = sorted(emoshapes.PLACES, key=len, reverse=True)  # "at the top right" before "at the top"
  place_re = re.compile("|".join(map(re.escape, places)))
  shape_re = re.compile(r"\b(" + "|".join(emoshapes.SHAPES) + r")\b")
  other = lambda seq, x: seq[(seq.index(x) + rng.integers(1, len(seq))) % len(seq)]
  return {
      "correct": list(prompts),
      "places_moved": [place_re.sub(lambda m: other(emoshapes.PLACES, m.group(0)), p) for p in prompts],
      "shapes_swapped": [shape_re.sub(lambda m: other(emoshapes.SHAPES, m.group(0)), p) for p in prompts],
      "background_only": ["a shape, on a " + p.rpartition(", on a ")[2] for p in prompts],
      "empty": [""] * len(prompts),
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--generator", default="", help="generator export directory ('' = the shipped tiny asset)")
  ap.add_argument("--num_images", type=int, default=128)
  ap.add_argument("--seed", type=int, default=12345, help="held-out EmoShapes world")
  ap.add_argument("--sigmas", default="0.5,0.7,0.9")
  args = ap.parse_args()
  gen, gcfg, params = common.load_generator(args.generator)
  tok = common.tokenizer_for(gcfg)
  ex = [emoshapes.make_example(args.seed, i, gcfg.mmdit.sample_size) for i in range(args.num_images)]
  x0 = jnp.asarray(np.stack([e["image"] for e in ex]).astype(np.float32) / 127.5 - 1.0)
  on_shape = jnp.asarray(np.stack([e["shape_mask"] for e in ex]), jnp.float32)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  n = len(ex)
  conds = {name: sampling.add_emotion(gen, params, sampling.encode_text(gen, params, tok(p)), jnp.zeros((n, 2)), None)
           for name, p in edited_prompts([e["emotional_prompt"] for e in ex]).items()}
  for s in map(float, args.sigmas.split(",")):
    x_t = (1.0 - s) * x0 + s * noise
    err = {name: jnp.mean((sampling.apply_velocity(gen, params, x_t, jnp.full((n,), s), c) - (noise - x0)) ** 2, -1)
           for name, c in conds.items()}
    for pixels, weight in (("all", jnp.ones_like(on_shape)), ("shapes", on_shape)):
      print(json.dumps({"sigma": s, "pixels": pixels,
                        **{k: round(float(jnp.sum(weight * e) / jnp.sum(weight)), 5) for k, e in err.items()}}))


if __name__ == "__main__":
  main()
