"""The LVLM as an emotion judge: load one, put the judge question to it with each image, answer
greedily in fixed-size jitted batches, and score the answers against labels.

The question is the model's: an emojax tiny-world LVLM (byte tokenizer) was taught the short
question by SFT, a transformers Qwen2.5-VL checkpoint gets the full one (`emojax.emotion.prompts`).
Scoring rules: `emojax.emotion.scoring`.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from emojax import parallel
from emojax.emotion import prompts, scoring
from emojax.io import assets
from emojax.lvlm import processor as proc_lib
from emojax.lvlm import sampling
from emojax.models import qwen_vl as qv

SFT_HINT = ("make one with `python -m emojax.train --config=configs/sft_lvlm.py --workdir=DIR` and pass DIR/export "
            "(or a transformers Qwen2.5-VL directory)")


ASSET_PREFIX = "asset:"


def load_lvlm(path: str):
  """-> (QwenVL, QwenVLConfig, host params, Processor) from an emojax LVLM export (config.json +
  params.safetensors, as the LVLM jobs export; "asset:NAME" names a shipped one) or a transformers Qwen2.5-VL directory
  (config.json + model*.safetensors + tokenizer files). One-line errors otherwise."""
  path = os.fspath(path or "")
  if path.startswith(ASSET_PREFIX):  # "asset:lvlm_tiny": a directory shipped in emojax/assets
    path = assets.asset_dir(path[len(ASSET_PREFIX):])
  if not path:
    raise ValueError(f"no LVLM directory given; {SFT_HINT}")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"LVLM directory {path} does not exist; {SFT_HINT}")
  if os.path.isfile(os.path.join(path, "params.safetensors")):
    params, cfg_dict = assets.load(path, f"LVLM export {path}", SFT_HINT)
    cfg = qv.QwenVLConfig.from_dict(cfg_dict)
    assets.check_tree_matches(params, qv.param_shapes(cfg), f"LVLM export {path}")
    return qv.QwenVL(cfg), cfg, params, proc_lib.Processor.tiny(cfg)
  if any(os.path.isfile(os.path.join(path, f)) for f in ("model.safetensors", "model.safetensors.index.json")):
    model, params = qv.from_pretrained(path)
    return model, model.config, params, proc_lib.Processor.from_pretrained(path, model.config)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    raise FileNotFoundError(f"{path} is a training workdir, not an LVLM export: pass {os.path.join(path, 'export')} "
                            f"(or write it with `python -m emojax.export --workdir={path}`)")
  raise FileNotFoundError(f"{path} holds neither params.safetensors (emojax export) nor model.safetensors "
                          f"(transformers); {SFT_HINT}")


def question(processor: proc_lib.Processor) -> str:
  """The judge question this model answers: the short one for the byte-level tiny world."""
  return prompts.judge_prompt(short=processor.is_tiny)


def judge_batch(processor: proc_lib.Processor, images, max_prompt_len: int) -> dict:
  """The judge question for each uint8 image, left-padded to max_prompt_len (`prompt_batch`)."""
  return proc_lib.prompt_batch(processor, images, question(processor), max_prompt_len)


def answer(model, params, processor, images, questions, *, batch_size: int, max_prompt_len: int,
           max_new_tokens: int, mesh=None) -> list[str]:
  """Greedy answers (text, special tokens dropped) to one question per uint8 image (or one for all), in
  fixed-size jitted batches (the last one padded with copies of its final row, whose answers are dropped).
  With a mesh (params sharded over it), `images` are this process's rows of a global batch: every process calls
  this with as many rows, each jitted batch is the processes' chunks of batch_size / process_count rows as one
  array sharded over the batch axes, and each process decodes its own rows' answers."""
  images = np.asarray(images)
  questions = [questions] * len(images) if isinstance(questions, str) else list(questions)
  if len(questions) != len(images):
    raise ValueError(f"{len(images)} images but {len(questions)} questions")
  chunk = batch_size if mesh is None else batch_size // jax.process_count()
  texts = []
  for start in range(0, len(images), chunk):
    part, asked = images[start:start + chunk], questions[start:start + chunk]
    n = len(part)
    part = np.concatenate([part, np.repeat(part[-1:], chunk - n, 0)])
    asked = asked + asked[-1:] * (chunk - n)
    batch = proc_lib.prompt_batch(processor, part, asked, max_prompt_len)
    if mesh is not None:
      grid = batch.pop("image_grid_thw") * jax.process_count()  # every image of the global batch has one grid
      batch = {**parallel.put_batch(batch, mesh), "image_grid_thw": grid}
    out = sampling.sample(model, params, batch, jax.random.key(0), max_new_tokens=max_new_tokens,
                          eos_ids=processor.eos_ids, pad_id=processor.pad_id, temperature=0.0)
    if mesh is None:
      tokens, mask = parallel.to_host((out["tokens"], out["mask"]))
    else:
      rows = parallel.host_rows({"tokens": out["tokens"], "mask": out["mask"]}, mesh)
      tokens, mask = rows["tokens"], rows["mask"]
    texts += [processor.decode(tok[m > 0], skip_special_tokens=True) for tok, m in zip(tokens[:n], mask[:n])]
  return texts


def judge(model, params, processor, images, *, batch_size: int, max_prompt_len: int, max_new_tokens: int,
          mesh=None) -> list[str]:
  """Greedy judge answers for uint8 images (`answer` with the judge question)."""
  return answer(model, params, processor, images, question(processor), batch_size=batch_size,
                max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens, mesh=mesh)


def evaluate(model, params, processor, split: dict, *, batch_size: int, max_prompt_len: int,
             max_new_tokens: int) -> dict:
  """Greedy judging of a labelled split (image, valence, arousal, and category unless the dataset has no Mikels
  category, as EMOTIC): `scoring.answer_metrics` and the predict-the-mean baseline."""
  texts = judge(model, params, processor, split["image"], batch_size=batch_size, max_prompt_len=max_prompt_len,
                max_new_tokens=max_new_tokens)
  return (scoring.answer_metrics(texts, split["valence"], split["arousal"], split.get("category"))
          | scoring.mean_baseline(split["valence"], split["arousal"], split.get("category")))
