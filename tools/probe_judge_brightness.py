"""How well an LVLM judge reads valence and arousal at each image brightness: where GRPO's reward is blind.

  python tools/probe_judge_brightness.py                      # the shipped tiny judge, world 777, 512 images
  python tools/probe_judge_brightness.py --lvlm=DIR --n=256

Judges examples 0..n-1 of a held-out EmoShapes world greedily and prints one JSON line per brightness bin
(mean over pixels of max(R, G, B) / 255): images, V and A mean absolute error and Pearson correlation with
the labels, unparsed answers. A bin where the arousal correlation collapses is a region of the V-A plane a
generator rewarded by this judge cannot be steered in (dark cells are the targets V -2.4, A +-2.4 need).
"""
import argparse
import json

import numpy as np

from emojax import config_utils
from emojax.data import pipeline
from emojax.emotion.answer import parse_answers
from emojax.rewards import lvlm_emotion

BINS = (0.0, 0.15, 0.3, 0.5, 0.7, 1.01)


def _corr(x, y):
  return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else float("nan")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--lvlm", default="", help="LVLM judge directory ('' = the shipped tiny judge)")
  ap.add_argument("--seed", type=int, default=777, help="EmoShapes world of the held-out images")
  ap.add_argument("--n", type=int, default=512, help="number of images")
  args = ap.parse_args()
  judge = lvlm_emotion.LVLMJudgeReward.from_config(config_utils.lvlm_judge(path=args.lvlm))
  split = pipeline.labelled_split(args.seed, args.n)
  answers = parse_answers(judge.answers(split["image"]))
  parsed = np.array([a is not None for a in answers])
  v_hat = np.array([a.valence if a is not None else np.nan for a in answers], np.float64)
  a_hat = np.array([a.arousal if a is not None else np.nan for a in answers], np.float64)
  brightness = split["image"].max(-1).mean((1, 2)) / 255.0
  for lo, hi in zip(BINS[:-1], BINS[1:]):
    rows = (brightness >= lo) & (brightness < hi)
    ok = rows & parsed
    v, a = split["valence"][ok], split["arousal"][ok]
    print(json.dumps({"brightness": [lo, min(hi, 1.0)], "n": int(rows.sum()), "unparsed": int((rows & ~parsed).sum()),
                      "v_mae": round(float(np.abs(v_hat[ok] - v).mean()), 3) if ok.any() else None,
                      "a_mae": round(float(np.abs(a_hat[ok] - a).mean()), 3) if ok.any() else None,
                      "v_corr": round(_corr(v_hat[ok], v), 3), "a_corr": round(_corr(a_hat[ok], a), 3)}))


if __name__ == "__main__":
  main()
