"""Evaluating any generator export on prompts x a V-A grid, as the paper reports it.

Every (prompt, V, A) is generated from fixed noise (the policy's `generate_uint8`), then read by every judge:
the LVLM judge's V̂, Â and category (its greedy answer), the colour judge's V and A (the tiny world's
definition of emotion), and the preference model's PickScore, CLIP-Score and CLIP-IQA.

Summary (one JSON object): valence_error / arousal_error (LVLM-judged mean absolute errors; an
unparsed answer counts as the worst in-range one, `emotion.scoring`), colour_valence_error /
colour_arousal_error, colour_error_floor (the least colour_valence_error + colour_arousal_error any
image can reach at these targets, `colour.colour_error_floor`), category_acc (judged category = the
target's nearest Mikels category), clip_score, pickscore (raw), clip_iqa, parse_rate, n. Files:
per_image.csv, images/, va_grid.png (per prompt: rows arousal high -> low, columns valence low -> high),
va_scatter.png (target vs judged V and A, identity line).
"""
from __future__ import annotations

import csv
import os

import numpy as np

from emojax.emotion import scoring
from emojax.emotion.answer import parse_answer
from emojax.emotion.colour import colour_error_floor, colour_judge_np
from emojax.emotion.space import CATEGORIES, check_va, nearest_category

CSV_FIELDS = ("file", "prompt", "target_valence", "target_arousal", "judged_valence", "judged_arousal",
              "judged_category", "colour_valence", "colour_arousal", "clip_score", "pickscore", "clip_iqa")


def read_prompts(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"prompts file {path} does not exist")
  with open(path) as f:
    prompts = [line.strip() for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"prompts file {path} holds no prompt (one per line)")
  return prompts


def grid_rows(prompts, grid) -> tuple[list[str], np.ndarray]:
  """Every prompt at every (V, A) of grid x grid: (prompts, targets (N, 2)), prompt-major, then V, then A."""
  grid = np.asarray(grid, np.float32)
  check_va(grid, grid)
  if not len(prompts):
    raise ValueError("no prompts to evaluate")
  va = np.array([(v, a) for v in grid for a in grid], np.float32)
  return [p for p in prompts for _ in va], np.tile(va, (len(prompts), 1))


def judge_rows(images, prompts, va, *, lvlm_answers, scorer, iqa_pair) -> dict[str, np.ndarray]:
  """Per-image readings of every judge (see the module docstring)."""
  answers = [parse_answer(t) for t in lvlm_answers]
  read = lambda f: np.array([getattr(a, f) if a is not None else np.nan for a in answers], np.float32)
  colour_v, colour_a = colour_judge_np(images)
  return {"judged_valence": read("valence"), "judged_arousal": read("arousal"),
          "judged_category": np.array([a.emotion if a is not None and a.emotion else "" for a in answers]),
          "colour_valence": np.asarray(colour_v, np.float32), "colour_arousal": np.asarray(colour_a, np.float32),
          "clip_score": scorer.clip_score(images, prompts), "pickscore": scorer.pickscore(images, prompts),
          "clip_iqa": scorer.clip_iqa(images, iqa_pair), "target_valence": va[:, 0], "target_arousal": va[:, 1]}


def summary(rows: dict[str, np.ndarray]) -> dict[str, float]:
  tv, ta = rows["target_valence"], rows["target_arousal"]
  ok = np.isfinite(rows["judged_valence"]) & np.isfinite(rows["judged_arousal"])
  err = lambda judged, target: float(np.where(ok, np.abs(judged - target), scoring.worst_error(target)).mean())
  want = [CATEGORIES[int(c)] for c in nearest_category(tv, ta)]
  return {"valence_error": err(rows["judged_valence"], tv), "arousal_error": err(rows["judged_arousal"], ta),
          "colour_valence_error": float(np.abs(rows["colour_valence"] - tv).mean()),
          "colour_arousal_error": float(np.abs(rows["colour_arousal"] - ta).mean()),
          "colour_error_floor": float(colour_error_floor(tv, ta).mean()),
          "category_acc": float(np.mean([c == w for c, w in zip(rows["judged_category"], want)])),
          "clip_score": float(rows["clip_score"].mean()), "pickscore": float(rows["pickscore"].mean()),
          "pickscore_min_cell": min_cell_mean(rows["pickscore"], tv, ta),
          "clip_iqa": float(rows["clip_iqa"].mean()), "parse_rate": float(ok.mean()), "n": int(len(tv))}


def feedback_summary(traces, kept_per_round, va: np.ndarray, settings: dict) -> dict:
  """The feedback loop's settings, the share of rewrites accepted, and per round the colour-judged and
  LVLM-judged errors of the images kept after that round."""
  statuses = [rd["status"] for t in traces for rd in t["rounds"]]
  rewrites = [s for s in statuses if s == "ok" or s.startswith(("unparsed", "refused"))]
  per_round = []
  for r, kept in enumerate(kept_per_round):
    cv, ca = colour_judge_np(np.stack(kept))
    judged = [min(e for rd in t["rounds"][:r + 1] for e in rd["error"]) for t in traces]
    per_round.append({"round": r, "colour_valence_error": float(np.abs(cv - va[:, 0]).mean()),
                      "colour_arousal_error": float(np.abs(ca - va[:, 1]).mean()), "judged_error": float(np.mean(judged))})
  return {"feedback": settings, "rewrite_accept_rate": float(np.mean([s == "ok" for s in rewrites])) if rewrites else None,
          "rounds": per_round}


def min_cell_mean(x: np.ndarray, tv: np.ndarray, ta: np.ndarray) -> float:
  """The lowest mean of x over the prompts at one (V, A) of the grid: a V-A target whose images all
  turned to noise shows here even when the overall mean hides it."""
  cells = {}
  for xi, v, a in zip(np.asarray(x, np.float64), tv, ta):
    cells.setdefault((float(v), float(a)), []).append(xi)
  return float(min(np.mean(c) for c in cells.values()))


def write(directory: str, prompts, images, rows: dict[str, np.ndarray], grid) -> None:
  """per_image.csv, images/<i>.png, va_grid.png, va_scatter.png into directory."""
  from PIL import Image
  os.makedirs(os.path.join(directory, "images"))
  files = [os.path.join("images", f"{i:05d}.png") for i in range(len(images))]
  for f, im in zip(files, images):
    Image.fromarray(im).save(os.path.join(directory, f))
  with open(os.path.join(directory, "per_image.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(CSV_FIELDS)
    for i in range(len(images)):
      w.writerow([files[i], prompts[i]] + [_fmt(rows[k][i]) for k in CSV_FIELDS[2:]])
  _plots(directory, images, prompts, rows, np.asarray(grid, np.float32))


def _fmt(x):
  return x if isinstance(x, str) else ("" if not np.isfinite(x) else f"{float(x):.4f}")


def _plots(directory, images, prompts, rows, grid):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  k = len(grid)
  per_prompt = k * k
  unique = [prompts[i] for i in range(0, len(prompts), per_prompt)]
  fig, axes = plt.subplots(len(unique), 1, figsize=(1.1 * k + 1.5, (1.1 * k + 1.0) * len(unique)), squeeze=False)
  for p, ax in enumerate(axes[:, 0]):
    block = images[p * per_prompt:(p + 1) * per_prompt].reshape(k, k, *images.shape[1:])  # (V, A, H, W, 3)
    h, w = images.shape[1:3]
    canvas = np.full((k * (h + 2), k * (w + 2), 3), 255, np.uint8)
    for vi in range(k):
      for ai in range(k):
        r, c = k - 1 - ai, vi  # rows: arousal high -> low; columns: valence low -> high
        canvas[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = block[vi, ai]
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([(c + 0.5) * (w + 2) for c in range(k)], [f"{v:g}" for v in grid])
    ax.set_yticks([(r + 0.5) * (h + 2) for r in range(k)], [f"{a:g}" for a in grid[::-1]])
    ax.set_xlabel("valence")
    ax.set_ylabel("arousal")
    ax.set_title(unique[p], fontsize=7, wrap=True)
  fig.tight_layout()
  fig.savefig(os.path.join(directory, "va_grid.png"), dpi=110)
  plt.close(fig)
  fig, axes = plt.subplots(1, 2, figsize=(8, 4))
  for ax, name in zip(axes, ("valence", "arousal")):
    t, j, c = rows[f"target_{name}"], rows[f"judged_{name}"], rows[f"colour_{name}"]
    ax.scatter(t, j, s=8, alpha=0.6, label="LVLM judge")
    ax.scatter(t, c, s=8, alpha=0.6, marker="x", label="colour judge")
    ax.plot([-3, 3], [-3, 3], "k--", lw=1, label="identity")
    ax.set(xlim=(-3.2, 3.2), ylim=(-3.2, 3.2), xlabel=f"target {name}", ylabel=f"judged {name}")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(directory, "va_scatter.png"), dpi=110)
  plt.close(fig)
