"""What an LVLM judge reads on flat backgrounds, beside the colour judge: where it can and cannot see emotion.

  python tools/probe_judge_colours.py                   # the shipped tiny judge
  python tools/probe_judge_colours.py --lvlm=emojax/assets/lvlm_tiny_sft

One EmoShapes image (world 5, index 0) with its background repainted in landmark colours (black,
greys, white, pastels, pure and dark vivid hues) and one grainy copy; prints one JSON line per image:
the colour judge's (V, A) and the LVLM's greedy reading. A judge whose readings take few values, or
disagree with the colour model where a generator can go, is a reward GRPO can only follow so far.
"""
import argparse
import colorsys
import json

import numpy as np

from emojax import config_utils
from emojax.data import emoshapes
from emojax.emotion.answer import parse_answers
from emojax.emotion.colour import colour_judge_np
from emojax.rewards import lvlm_emotion

COLOURS = {  # name -> HSV in [0, 1]
    "black": (0, 0, 0.02), "dark grey": (0, 0, 0.25), "mid grey": (0, 0, 0.5), "white": (0, 0, 1.0),
    "pale": (0.05, 0.15, 0.95), "beige": (0.1, 0.2, 0.8), "pink": (0.9, 0.5, 1.0), "red": (0, 1, 1),
    "dark red": (0, 1, 0.5), "brown": (0.08, 0.7, 0.3), "navy": (0.65, 0.8, 0.35), "dark vivid": (0.6, 1, 0.3),
    # where the V -2.4 column's targets lie: brightness 0.06, saturation 0 / 0.5 / 1
    "near black": (0, 0, 0.06), "near black, half vivid": (0.6, 0.5, 0.06), "near black, vivid": (0.6, 1, 0.06)}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--lvlm", default="", help="LVLM judge directory ('' = the shipped tiny judge)")
  args = ap.parse_args()
  judge = lvlm_emotion.LVLMJudgeReward.from_config(config_utils.lvlm_judge(path=args.lvlm))
  example = emoshapes.make_example(5, 0)
  background = example["shape_mask"] == 0
  images, names = [], []
  for name, hsv in COLOURS.items():
    image = example["image"].copy()
    image[background] = np.round(np.array(colorsys.hsv_to_rgb(*hsv)) * 255)
    images.append(image)
    names.append(name)
  grain = np.random.default_rng(0).normal(0, 40, images[0].shape)
  images.append(np.clip(images[names.index("pale")] + grain, 0, 255).astype(np.uint8))
  names.append("pale + grain")
  images = np.stack(images)
  answers = parse_answers(judge.answers(images))  # judge.judge pads the last batch itself
  v, a = colour_judge_np(images)
  for i, name in enumerate(names):
    got = answers[i]
    print(json.dumps({"background": name, "colour_v": round(float(v[i]), 2), "colour_a": round(float(a[i]), 2),
                      "lvlm_v": None if got is None else got.valence, "lvlm_a": None if got is None else got.arousal}))


if __name__ == "__main__":
  main()
