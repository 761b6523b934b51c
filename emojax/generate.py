"""python -m emojax.generate --prompt="a star in the center" --valence=2 --arousal=-1 --outdir=OUT

Test-time self-promotion (emojax.pipelines.feedback_loop): round 0 makes --images_per_round images of the
neutral prompt at the target (V, A); the LVLM judges each; the round's best (judged error, PickScore as
tie-break) gets the LVLM's critique and rewritten prompt, which the next round uses; --feedback_rounds
rounds at most, fewer once the judged error is under --stop_error. --rewrite=false keeps the prompt
(selection alone, same budget). Several --valence / --arousal values (comma lists) make a grid: every
prompt at every (V, A).

OUT holds best.png, rounds/, trace.json and contact_sheet.png for one request, one such directory per
request (NNN_v.._a..) and summary.json for several. OUT must be new or empty; it is written whole or not
at all. Generator, LVLM and preference model are the shipped tiny ones unless named.
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging

from emojax import cli

_PROMPT = flags.DEFINE_string("prompt", None, "Neutral prompt (content only; the emotion comes from the target).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "Text file of neutral prompts, one per line.")
_VALENCE = flags.DEFINE_list("valence", ["0"], "Target valence in [-3, 3]; a comma list makes a grid.")
_AROUSAL = flags.DEFINE_list("arousal", ["0"], "Target arousal in [-3, 3]; a comma list makes a grid.")
_ROUNDS = flags.DEFINE_integer("feedback_rounds", 3, "Rounds of generate -> judge -> rewrite (>= 1).")
_PER_ROUND = flags.DEFINE_integer("images_per_round", 8, "Images generated per round and request (>= 1).")
_STOP = flags.DEFINE_float("stop_error", 0.0, "Stop a request once its judged |dV| + |dA| is below this (0 = never).")
_REWRITE = flags.DEFINE_bool("rewrite", True, "Rewrite the prompt between rounds (false: selection alone).")
_GENERATOR = flags.DEFINE_string("generator", "", "Generator directory (tiny or an SD3 pipeline / SD3 export); "
                                  "empty = the shipped tiny generator.")
_LVLM = flags.DEFINE_string("lvlm", "", "LVLM directory (judge and rewriter); empty = the shipped tiny LVLM.")
_PREFERENCE = flags.DEFINE_string("preference", "", "Preference (CLIP) directory; empty = the shipped tiny one.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds every image's noise.")
_OUTDIR = flags.DEFINE_string("outdir", None, "Output directory (new or empty).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 20, "ODE steps per image.")
_CFG = flags.DEFINE_float("cfg_scale", 1.0, "Classifier-free guidance scale (1 = off).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per jitted generation, judging and scoring batch.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar over rounds.")


def _targets(values, name) -> list[float]:
  out = []
  for v in values:
    try:
      x = float(v)
    except ValueError:
      raise ValueError(f"--{name}={v!r} is not a number; give values in [-3, 3]") from None
    if not -3.0 <= x <= 3.0:
      raise ValueError(f"--{name}={x:g} is outside [-3, 3]")
    out.append(x)
  if not out:
    raise ValueError(f"--{name} is empty; give at least one value in [-3, 3]")
  return out


def requests() -> tuple[list[str], list[tuple[float, float]]]:
  from emojax.evaluation.report import read_prompts
  if (_PROMPT.value is None) == (_PROMPTS_FILE.value is None):
    raise app.UsageError("give exactly one of --prompt and --prompts_file")
  prompts = [_PROMPT.value] if _PROMPT.value is not None else read_prompts(_PROMPTS_FILE.value)
  if any(not p.strip() for p in prompts):
    raise ValueError("empty prompt: give the neutral prompt to generate from")
  vs, as_ = _targets(_VALENCE.value, "valence"), _targets(_AROUSAL.value, "arousal")
  pairs = [(v, a) for v in vs for a in as_]
  return [p for p in prompts for _ in pairs], [va for _ in prompts for va in pairs]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _OUTDIR.value:
    raise app.UsageError("--outdir=OUT is required")
  for name, value, lo in (("feedback_rounds", _ROUNDS.value, 1), ("images_per_round", _PER_ROUND.value, 1),
                          ("num_steps", _NUM_STEPS.value, 1), ("batch_size", _BATCH.value, 1)):
    if value < lo:
      raise ValueError(f"--{name}={value} must be >= {lo}")
  if _STOP.value < 0:
    raise ValueError(f"--stop_error={_STOP.value} must be >= 0")
  out_dir = os.path.abspath(_OUTDIR.value)
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"refusing to write into {out_dir}: it holds other files; choose an empty or new --outdir")
  prompts, va = requests()
  cli.use_compilation_cache()
  import numpy as np
  from emojax import config_utils as cu
  from emojax.io import assets
  from emojax.pipelines import feedback_loop as fl
  from emojax.data.feedback import content_kept
  from emojax.pipelines import policy as policy_lib
  from emojax.rewards.clip_scores import PickScoreReward
  from emojax.rewards.lvlm_emotion import LVLMJudgeReward
  policy = policy_lib.load(_GENERATOR.value)
  judge_reward = LVLMJudgeReward.from_config(cu.lvlm_judge(_LVLM.value, batch_size=_BATCH.value))
  scorer = PickScoreReward.from_config(cu.preference_model(_PREFERENCE.value, batch_size=_BATCH.value)).scorer
  models = fl.policy_models(policy, policy.params, judge_reward, scorer, seed=_SEED.value, num_steps=_NUM_STEPS.value,
                            shift=policy.shift, cfg_scale=_CFG.value, batch_size=_BATCH.value)
  traces = fl.run(prompts, np.array(va, np.float32), models, rounds=_ROUNDS.value, images_per_round=_PER_ROUND.value,
                  stop_error=_STOP.value, rewrite=_REWRITE.value, content_kept=content_kept, progress=_PROGRESS.value)

  def write(tmp):
    if len(traces) == 1:
      fl.write_request(tmp, traces[0])
      return
    summary = []
    for i, t in enumerate(traces):
      name = f"{i:03d}_v{t['target'][0]:+.1f}_a{t['target'][1]:+.1f}"
      out = fl.write_request(os.path.join(tmp, name), t)
      summary.append({"dir": name, "prompt": t["neutral"], **out["target"], "final_prompt": t["rounds"][out["best"]["round"]]["prompt"],
                      **{f"best_{k}": v for k, v in out["best"].items()}})
    with open(os.path.join(tmp, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  assets.save_directory(out_dir, write, is_export=lambda d: False)
  errors = [t["best_error"] for t in traces]
  logging.info("wrote %d request(s) to %s", len(traces), out_dir)
  print(json.dumps({"outdir": out_dir, "requests": len(traces), "mean_judged_error": float(np.mean(errors))}), flush=True)


if __name__ == "__main__":
  cli.run(main, "emojax.generate")
