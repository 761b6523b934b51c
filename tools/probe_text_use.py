"""Which prompt words a generator uses: flow-matching loss on held-out EmoShapes images under edited prompts.

  python tools/probe_text_use.py                       # the shipped tiny generator
  python tools/probe_text_use.py --generator=DIR --num_images=128 --sigmas=0.5,0.7,0.9

For each sigma prints two JSON lines of mean losses (fixed noise, emotion input zero), over all pixels
and over shape pixels only: the image's own emotional prompt; every place phrase moved to another
cell; every shape name swapped for another; background words only; the empty prompt. A generator
that draws what the prompt says loses when a word is edited; equal losses mean the words are ignored.
Then samples "a <kind> <place>" for every kind and cell and prints which kind the layout judge
reads for each kind named (rows: named; columns: read, then "none").
"""
import argparse
import json

from emojax.data import emoshapes
from emojax.evaluation import text_use
from emojax.pipelines import tiny


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--generator", default="", help="generator export directory ('' = the shipped tiny asset)")
  ap.add_argument("--num_images", type=int, default=128)
  ap.add_argument("--seed", type=int, default=12345, help="held-out EmoShapes world")
  ap.add_argument("--sigmas", default="0.5,0.7,0.9")
  ap.add_argument("--per_cell", type=int, default=2, help="samples of each kind in each cell (0: skip)")
  args = ap.parse_args()
  gen, gcfg, params = tiny.load_generator(args.generator)
  examples = [emoshapes.make_example(args.seed, i, gcfg.mmdit.sample_size) for i in range(args.num_images)]
  sigmas = [float(s) for s in args.sigmas.split(",")]
  for s, by_pixels in text_use.text_use_losses(gen, gcfg, params, examples, sigmas).items():
    for pixels, losses in by_pixels.items():
      print(json.dumps({"sigma": s, "pixels": pixels, **{k: round(v, 5) for k, v in losses.items()}}))
  if args.per_cell:
    confusion = text_use.kind_confusion(gen, gcfg, params, per_cell=args.per_cell)
    print(json.dumps({"kind_acc": round(float(confusion.trace() / confusion.sum()), 3),
                      **{k: row.tolist() for k, row in zip(emoshapes.SHAPES, confusion)}}))


if __name__ == "__main__":
  main()
