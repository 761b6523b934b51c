"""Test-time self-promotion: generate, judge, critique and rewrite the prompt over rounds, keep the best.

For every request (neutral prompt, target V, A): round 0 uses the neutral prompt; each round makes
`images_per_round` images of the round's prompt at the target (all requests of a round in one
generation call), the LVLM judges each, and the round's best image (lowest judged |V̂ - V| + |Â - A|,
an unread answer counting as the worst in-range one; higher PickScore breaks ties) is shown with the
neutral prompt (the content to keep), the target and its reading to the rewriter, whose `<think>..</think><prompt>..</prompt>`
answer is the next round's prompt. An answer that does not parse, or whose prompt loses, moves or
invents a shape of the neutral prompt, is refused: the next round keeps the current prompt and the
trace says why. A request stops early once its best judged error is under `stop_error`. The kept image
is the best over all rounds. `rewrite=False` keeps the neutral prompt every round (the same budget:
selection alone).

Noise: image k of round r of request i is drawn from noise id (i * rounds + r) * images_per_round + k,
whatever the batching, so runs with and without rewriting see the same noise.

The models come in as callables (`Models`), so the loop is the same at both scales; `lvlm_rewriter`
and `oracle_rewriter` are the two rewriters (the second the tiny world's closed-form reference).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from emojax.emotion import prompts as prompt_lib
from emojax.emotion.answer import END_THINK, THINK, Answer, last_block, parse_answer
from emojax.emotion.scoring import worst_error
from emojax.emotion.space import check_va


@dataclasses.dataclass
class Models:
  generate: Callable  # (prompts list[str], va (N, 2) float32, noise_ids (N,) int) -> uint8 (N, H, W, 3)
  judge: Callable  # uint8 images -> judge answer texts
  pickscore: Callable  # (uint8 images, prompts) -> (N,) float32
  rewrite: Callable | None = None  # (uint8 images, neutral prompts, va (N, 2), judged list[Answer | None]) -> answer texts


def judged_error(answers: Sequence[Answer | None], va: np.ndarray) -> np.ndarray:
  """|V̂ - V| + |Â - A| per answer (an Answer, None or a text); an unread answer counts as the worst in-range one."""
  out = np.empty(len(answers), np.float64)
  for i, (a, (v, ar)) in enumerate(zip(answers, np.asarray(va, np.float64))):
    a = parse_answer(a) if isinstance(a, str) else a
    dv = abs(a.valence - v) if a is not None and a.valence is not None else worst_error(v)
    da = abs(a.arousal - ar) if a is not None and a.arousal is not None else worst_error(ar)
    out[i] = dv + da
  return out


def pick_best(error: np.ndarray, pickscore: np.ndarray) -> int:
  """Index of the lowest error, the higher PickScore among equal errors."""
  return int(np.lexsort((-np.asarray(pickscore, np.float64), np.asarray(error, np.float64)))[0])


def critique_of(text: str) -> str:
  span = last_block(text, THINK, END_THINK) if isinstance(text, str) else None
  return text[span[0]:span[1]].strip() if span else ""


def checked_rewrite(neutral: str, current: str, text: str, content_kept: Callable | None) -> tuple[str, str]:
  """(next prompt, status): the rewrite when it parses and keeps the content, else the current prompt."""
  rewritten = prompt_lib.parse_feedback(text)
  if rewritten is None:
    return current, "unparsed: no <prompt>..</prompt> block"
  if content_kept is not None and not content_kept(neutral, rewritten):
    return current, "refused: the rewrite loses, moves or invents a shape or place of the prompt"
  return rewritten, "ok"


def run(neutral: Sequence[str], va, models: Models, *, rounds: int = 3, images_per_round: int = 8,
        stop_error: float = 0.0, rewrite: bool = True, content_kept: Callable | None = None,
        progress: bool = False) -> list[dict]:
  """The loop for every request (neutral[i], va[i]); returns one trace per request:
  {"neutral", "target", "rounds": [{"prompt", "images" uint8 (K, H, W, 3), "answers", "valence", "arousal",
  "category", "error", "pickscore", "chosen", "feedback", "critique", "status"}], "best": (round, image),
  "best_image", "best_error"}. `content_kept(neutral, rewritten)` vets rewrites (None: any parsed prompt)."""
  va = np.asarray(va, np.float32).reshape(-1, 2)
  if len(neutral) != len(va):
    raise ValueError(f"{len(neutral)} prompts but {len(va)} targets")
  if any(not str(p).strip() for p in neutral):
    raise ValueError("empty prompt: every request needs a neutral prompt")
  check_va(va[:, 0], va[:, 1])
  if rounds < 1 or images_per_round < 1:
    raise ValueError(f"rounds={rounds} and images_per_round={images_per_round} must both be >= 1")
  if rewrite and models.rewrite is None:
    raise ValueError("rewrite=True needs a rewriter (Models.rewrite)")
  traces = [{"neutral": str(p), "target": [float(v), float(a)], "rounds": [], "best": None, "best_error": np.inf,
             "best_pickscore": -np.inf}
            for p, (v, a) in zip(neutral, va)]
  current = [str(p) for p in neutral]
  active = list(range(len(traces)))
  steps = range(rounds)
  if progress:
    from tqdm import tqdm
    steps = tqdm(steps, desc="feedback rounds", unit="round")
  k = images_per_round
  for r in steps:
    if not active:
      break
    rows = [i for i in active for _ in range(k)]
    noise = np.array([(i * rounds + r) * k + j for i in active for j in range(k)], np.int64)
    row_prompts = [current[i] for i in rows]
    images = np.asarray(models.generate(row_prompts, va[rows], noise))
    texts = models.judge(images)
    answers = [parse_answer(t) for t in texts]
    err = judged_error(answers, va[rows])
    pick = np.asarray(models.pickscore(images, row_prompts), np.float32)
    chosen = {}
    for n, i in enumerate(active):
      s = slice(n * k, (n + 1) * k)
      c = pick_best(err[s], pick[s])
      chosen[i] = n * k + c
      read = lambda f: [getattr(a, f) if a is not None else None for a in answers[s]]
      traces[i]["rounds"].append({
          "prompt": current[i], "images": images[s], "answers": texts[s], "valence": read("valence"),
          "arousal": read("arousal"), "category": read("emotion"), "error": err[s].tolist(),
          "pickscore": pick[s].tolist(), "chosen": c, "feedback": None, "critique": "", "status": "final round"})
      if (err[s][c], -pick[s][c]) < (traces[i]["best_error"], -traces[i]["best_pickscore"]):
        traces[i]["best"], traces[i]["best_error"], traces[i]["best_pickscore"] = (r, c), float(err[s][c]), float(pick[s][c])
        traces[i]["best_image"] = images[s][c]
      traces[i]["rounds"][-1]["kept"] = traces[i]["best"]  # the best (round, image) so far
    stopped = [i for i in active if traces[i]["best_error"] < stop_error]
    for i in stopped:
      traces[i]["rounds"][-1]["status"] = f"stopped: judged error {traces[i]['best_error']:.2f} < {stop_error:g}"
    active = [i for i in active if i not in stopped]
    if r == rounds - 1 or not active:
      continue
    if not rewrite:
      for i in active:
        traces[i]["rounds"][-1]["status"] = "kept: rewriting is off"
      continue
    idx = [chosen[i] for i in active]
    # the question carries the neutral prompt (the content to keep); the current prompt's effect is in the image
    feedback = models.rewrite(images[idx], [traces[i]["neutral"] for i in active], va[active], [answers[j] for j in idx])
    for i, text in zip(active, feedback):
      current[i], status = checked_rewrite(traces[i]["neutral"], current[i], text, content_kept)
      traces[i]["rounds"][-1].update(feedback=text, critique=critique_of(text), status=status)
  return traces


def lvlm_rewriter(model, params, processor, *, batch_size: int, max_prompt_len: int, max_new_tokens: int) -> Callable:
  """The LVLM's feedback turn (`prompts.feedback_prompt` with the judged reading; the short form for the
  byte-level tiny LVLM), answered greedily."""
  from emojax.lvlm import judge

  def rewrite(images, neutral, va, judged):
    questions = [prompt_lib.feedback_prompt(p, float(v), float(a), j if j is not None else None, short=processor.is_tiny)
                 for p, (v, a), j in zip(neutral, va, judged)]
    # a user's prompt may be longer than any world prompt: widen to it (in steps of 32, so few recompiles)
    grid = processor.image(np.asarray(images)[0])[1]
    longest = max(len(processor.encode(prompt_lib.chat_text(q), [grid])) for q in questions)
    length = max(max_prompt_len, -(-longest // 32) * 32)
    return judge.answer(model, params, processor, images, questions, batch_size=batch_size,
                        max_prompt_len=length, max_new_tokens=max_new_tokens)
  return rewrite


def oracle_rewriter(images, neutral, va, judged) -> list[str]:
  """The tiny world's reference rewriter: the closed-form inverse of the colour model
  (`data.feedback.oracle_rewrite`) and the critique of the judged gap."""
  from emojax.data import feedback
  out = []
  for p, (v, a), j in zip(neutral, va, judged):
    gap = feedback.critique((v, a), (j.valence, j.arousal), short=True) if j is not None and j.valence is not None \
        and j.arousal is not None else "the reading did not parse"
    out.append(prompt_lib.format_feedback(feedback.oracle_rewrite(p, float(v), float(a)), gap))
  return out


def feedback_lengths(processor, image_size: int) -> tuple[int, int]:
  """(prompt tokens with the image, answer tokens with end of turn) of the longest tiny-world feedback turn."""
  from emojax.data.feedback import longest_turn
  question, answer = longest_turn(short=processor.is_tiny)
  _, grid = processor.image(np.zeros((image_size, image_size, 3), np.uint8))
  return len(processor.encode(prompt_lib.chat_text(question), [grid])), len(processor.tokenizer.encode(answer)) + 1


def policy_models(policy, params, judge_reward, scorer, *, seed: int, num_steps: int, shift: float,
                  cfg_scale: float, batch_size: int, rewriter: str = "lvlm") -> Models:
  """Models of a generator policy (emojax.pipelines.policy, either scale): the generator (ODE from the noise
  ids), the LVLM judge reward's model as judge and (rewriter "lvlm") rewriter, or the closed-form "oracle"
  rewriter; the scorer's PickScore."""
  def generate(prompts, va, noise_ids):
    return policy.generate_uint8(params, prompts, va, seed=seed, batch_size=batch_size, num_steps=num_steps,
                                 shift=shift, cfg_scale=cfg_scale, progress=False, noise_ids=noise_ids)

  if rewriter == "oracle":
    rewrite = oracle_rewriter
  elif rewriter == "lvlm":
    prompt_len, new_tokens = feedback_lengths(judge_reward.processor, policy.image_size)
    rewrite = lvlm_rewriter(judge_reward.model, judge_reward.params, judge_reward.processor,
                            batch_size=judge_reward.batch_size, max_prompt_len=prompt_len, max_new_tokens=new_tokens)
  else:
    raise ValueError(f"unknown rewriter {rewriter!r}; use 'lvlm' or 'oracle'")
  return Models(generate, judge_reward.answers, scorer.pickscore, rewrite)


def best_so_far(traces: list[dict]) -> list[list[np.ndarray]]:
  """Per round, each request's kept image after that round (a request that stopped keeps its best)."""
  rounds = max(len(t["rounds"]) for t in traces)
  kept = lambda t, r: t["rounds"][min(r, len(t["rounds"]) - 1)]["kept"]
  return [[t["rounds"][kept(t, r)[0]]["images"][kept(t, r)[1]] for t in traces] for r in range(rounds)]


def trace_json(trace: dict, files: Sequence[Sequence[str]] | None = None) -> dict:
  """A trace without its pixels (JSON-ready): per round the prompt, per image its file, judged V, A,
  category, error and PickScore, the chosen image, the feedback answer, its critique and the parse status."""
  rounds = []
  for r, rd in enumerate(trace["rounds"]):
    images = [{"file": files[r][k] if files else None, "valence": rd["valence"][k], "arousal": rd["arousal"][k],
               "category": rd["category"][k], "judged_error": round(rd["error"][k], 4),
               "pickscore": round(rd["pickscore"][k], 4), "answer": rd["answers"][k]} for k in range(len(rd["images"]))]
    rounds.append({"round": r, "prompt": rd["prompt"], "images": images, "chosen": rd["chosen"],
                   "feedback": rd["feedback"], "critique": rd["critique"], "status": rd["status"]})
  return {"neutral_prompt": trace["neutral"], "target": {"valence": trace["target"][0], "arousal": trace["target"][1]},
          "rounds": rounds, "best": {"round": trace["best"][0], "image": trace["best"][1],
                                     "judged_error": round(trace["best_error"], 4)}}


def contact_sheet(trace: dict, path: str, scale: int = 4) -> None:
  """One row per round (its images, the chosen one framed red, the kept one also framed green) with the
  round's prompt printed under it."""
  import textwrap
  from PIL import Image, ImageDraw
  rows = trace["rounds"]
  h, w = rows[0]["images"].shape[1:3]
  cell, pad = (h * scale, w * scale), 6
  k = max(len(r["images"]) for r in rows)
  width = k * (cell[1] + pad) + pad
  text_lines = [textwrap.wrap(f"round {i}: {r['prompt']}  [{r['status']}]", width=max(20, width // 6)) for i, r in enumerate(rows)]
  heights = [cell[0] + 2 * pad + 11 * len(t) + pad for t in text_lines]
  sheet = Image.new("RGB", (width, sum(heights) + 14), "white")
  draw = ImageDraw.Draw(sheet)
  draw.text((pad, 2), f"target V {trace['target'][0]:+.1f} A {trace['target'][1]:+.1f}", fill="black")
  y = 14
  for i, (r, lines) in enumerate(zip(rows, text_lines)):
    for j, im in enumerate(r["images"]):
      x = pad + j * (cell[1] + pad)
      sheet.paste(Image.fromarray(im).resize(cell[::-1], Image.NEAREST), (x, y + pad))
      frames = [("red", 2)] if j == r["chosen"] else []
      frames += [("green", 4)] if trace["best"] == (i, j) else []
      for colour, off in frames:
        draw.rectangle([x - off, y + pad - off, x + cell[1] + off - 1, y + pad + cell[0] + off - 1], outline=colour, width=2)
    for n, line in enumerate(lines):
      draw.text((pad, y + cell[0] + 2 * pad + 11 * n), line, fill="black")
    y += heights[i]
  sheet.save(path)


def write_request(directory: str, trace: dict) -> dict:
  """best.png, rounds/r{R}_{K}.png, trace.json and contact_sheet.png of one request into `directory`."""
  import json
  import os
  from PIL import Image
  os.makedirs(os.path.join(directory, "rounds"), exist_ok=True)
  files = []
  for r, rd in enumerate(trace["rounds"]):
    files.append([os.path.join("rounds", f"r{r}_{k}.png") for k in range(len(rd["images"]))])
    for f, im in zip(files[-1], rd["images"]):
      Image.fromarray(im).save(os.path.join(directory, f))
  Image.fromarray(trace["best_image"]).save(os.path.join(directory, "best.png"))
  out = trace_json(trace, files)
  with open(os.path.join(directory, "trace.json"), "w") as f:
    json.dump(out, f, indent=1)
  contact_sheet(trace, os.path.join(directory, "contact_sheet.png"))
  return out
