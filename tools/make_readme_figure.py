"""The README's picture: the main job's generator before and after GRPO on the same prompts x V-A grid.

  python tools/make_readme_figure.py --workdir=WORKDIR_OF_A_FINISHED_MAIN_RUN --out=docs/va_grid_before_after.png

Runs the generator evaluation of `python -m emojax.evaluate --config=configs/evaluate_generator.py` (its defaults:
4 held-out neutral prompts x EmotiCrafter's 5x5 V-A grid, ODE 20, fixed noise) twice, with the same functions:
on the shipped generator (emojax/assets/generator_tiny, "before") and on WORKDIR/export ("after"). Each writes
its va_grid.png (rows arousal high -> low, columns valence low -> high); the two are put side by side under
labels with each side's colour-judged errors and PickScore. Prints both summaries as JSON lines.
"""
from __future__ import annotations

import json
import os
import tempfile

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a finished main-job run (its export/ is the 'after').")
_OUT = flags.DEFINE_string("out", "docs/va_grid_before_after.png", "Output PNG.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", None, "Held-out prompts (default: the evaluation config's).")
_KEEP = flags.DEFINE_string("keep", "", "Keep the two evaluations in this new directory (before/, after/); default: a temp dir.")
_DPI = flags.DEFINE_integer("dpi", 80, "Resolution of the output (the evaluation's grids are drawn at 110).")


def evaluate(c, judges, directory: str) -> dict:
  """emojax.evaluate's generator mode without its CLI: images, judges, va_grid.png into directory."""
  from emojax.evaluation import grid_eval, report
  prompts, _ = grid_eval.grid_prompts(c)
  rows_prompts, va = report.grid_rows(prompts, c.grid)
  out = grid_eval.run(c, judges, rows_prompts, va)
  os.makedirs(directory, exist_ok=True)
  report.write(directory, rows_prompts, out["images"], out["rows"], c.grid)
  with open(os.path.join(directory, "metrics.json"), "w") as f:
    json.dump(out["summary"], f, indent=1)
  return out["summary"]


def label(name: str, s: dict) -> str:
  return (f"{name}\ncolour |dV| {s['colour_valence_error']:.2f}, |dA| {s['colour_arousal_error']:.2f}; "
          f"PickScore {s['pickscore']:.1f} (lowest cell {s['pickscore_min_cell']:.1f})")


def main(argv):
  del argv
  from emojax.configs import evaluate_generator
  from emojax.evaluation import grid_eval
  export = os.path.join(_WORKDIR.value, "export")
  if not os.path.isfile(os.path.join(export, "config.json")):
    raise app.UsageError(f"{export} holds no generator export; is {_WORKDIR.value} a finished main-job run?")
  c = evaluate_generator.get_config()
  if _NUM_PROMPTS.value:
    c.data.num_prompts = _NUM_PROMPTS.value
  judges = grid_eval.Judges.from_config(c)
  if _KEEP.value:
    figure(c, judges, export, _KEEP.value)
  else:
    with tempfile.TemporaryDirectory(prefix="readme_figure_") as root:
      figure(c, judges, export, root)
  print(f"wrote {_OUT.value}", flush=True)


def figure(c, judges, export: str, root: str) -> None:
  summaries = {}
  for name, generator in (("before", ""), ("after", export)):
    c.generator = generator
    summaries[name] = evaluate(c, judges, os.path.join(root, name))
    print(json.dumps({"generator": name, **summaries[name]}), flush=True)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from PIL import Image
  grids = [Image.open(os.path.join(root, n, "va_grid.png")).convert("RGB") for n in ("before", "after")]
  h, w = grids[0].height, grids[0].width
  fig, axes = plt.subplots(1, 2, figsize=(2 * w / 110, h / 110 + 0.5), dpi=110)
  titles = (label("before: the shipped generator (emojax/assets/generator_tiny)", summaries["before"]),
            label("after: main-job GRPO from it (WORKDIR/export)", summaries["after"]))
  for ax, im, title in zip(axes, grids, titles):
    ax.imshow(im)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  fig.savefig(_OUT.value, dpi=_DPI.value, pil_kwargs={"optimize": True})  # full RGB: a palette hides faint grain
  plt.close(fig)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
