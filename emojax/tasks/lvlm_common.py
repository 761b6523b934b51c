"""Pieces the LVLM jobs share (SFT now, LVLM GRPO next): the model from config, the judge's prompt
batch for EmoShapes images, SFT targets, teacher-forced logits, and judging an EmoShapes split.

Sequence layout, the same in training and in sampling: the prompt is left-padded to a fixed
max_prompt_len L (`processor.prompt_batch`), the answer follows in slots L.. and is right-padded
to a fixed target_len T. So teacher forcing sees each answer token at exactly the position (and
M-RoPE position) it has when `emojax.lvlm.sampling.sample` generates it, and every shape is static.

SFT target (what the tiny judge learns to write):

  <think>{bg} background, {overall} overall</think><answer>{"valence": .., "arousal": ..,
  "emotion": ".."}</answer><|im_end|>

{bg} is the background's colour words, as the image's emotional prompt says them ("dim muted
cool"); {overall} is `emoshapes.colour_words` of the whole image. Both are read off the pixels.
The background words are the caption vocabulary the generator is steered with, so the judge
learns to name what the feedback loop rewrites; the overall words are the brightness and
saturation thirds of the very means the colour judge turns into (V, A), so the reasoning is a
coarse first reading that the numbers then refine. At most 55 bytes: with the byte tokenizer
the longest target is 148 tokens (`max_target_tokens`).

Scoring a judge. Greedy answers are parsed with `parse_answer`. An unparsable answer (or a
missing V/A) counts as the worst answer in range would: |error| = 3 + |target| (the distance
to the far end of [-3, 3]), so failing to answer never beats any answer; the MAE over parsed
answers alone is reported beside it. A missing or unknown emotion counts as a wrong category.
The "predict the mean" baseline answers every image with the split's mean V and mean A and its
most frequent category; a judge that does not beat it has learnt the prior, not the image.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from emojax.data import emoshapes, pipeline
from emojax.emotion import prompts
from emojax.emotion.answer import Answer, format_answer, parse_answer
from emojax.emotion.space import CATEGORIES, VA_MAX, VA_MIN
from emojax.lvlm import processor as proc_lib
from emojax.lvlm import sampling
from emojax.models import assets
from emojax.models import qwen_vl as qv

SFT_HINT = ("make one with `python -m emojax.train --config=configs/sft_lvlm.py --workdir=DIR` and pass DIR/export "
            "(or a transformers Qwen2.5-VL directory)")


# ------------------------------------------------------------------------------------------- model


def init_params(config: qv.QwenVLConfig, rng, std: float = 0.02):
  """Random weights as transformers initialises Qwen2.5-VL: every kernel and embedding N(0, std²)
  (initializer_range 0.02), norm scales 1, biases 0. Flax's defaults would give the tied
  embedding unit variance, i.e. initial logits of std ~sqrt(hidden): a near-one-hot first
  guess and a large first loss. Built from `param_shapes` (no forward is compiled), all normals
  drawn as one vector and cut into leaves: one RNG op compiles in a fraction of the time of one
  per leaf."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(qv.param_shapes(config))
  kind = [path[-1].key if path[-1].key in ("scale", "bias") else "normal" for path, _ in leaves]
  sizes = [int(np.prod(s.shape)) if k == "normal" else 0 for k, (_, s) in zip(kind, leaves)]
  flat = std * jax.random.normal(rng, (sum(sizes),), jnp.float32)
  offsets = np.cumsum([0] + sizes)
  out = []
  for k, (_, s), start, size in zip(kind, leaves, offsets, sizes):
    if k == "normal":
      out.append(flat[start:start + size].reshape(s.shape).astype(s.dtype))
    else:
      out.append(jnp.full(s.shape, float(k == "scale"), s.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def load_lvlm(path: str):
  """-> (QwenVL, QwenVLConfig, host params, Processor) from an emojax LVLM export (config.json +
  params.safetensors, as SFT's on_finish writes) or a transformers Qwen2.5-VL directory
  (config.json + model*.safetensors + tokenizer files). One-line errors otherwise."""
  path = os.fspath(path or "")
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
                            "(written when the run reaches total_steps)")
  raise FileNotFoundError(f"{path} holds neither params.safetensors (emojax export) nor model.safetensors "
                          f"(transformers); {SFT_HINT}")


def make_model(model_config):
  """config.model -> (QwenVL, QwenVLConfig, pretrained host params or None, Processor).
  `pretrained` (a directory) wins over `preset` (random init, see init_params)."""
  if model_config.pretrained:
    return load_lvlm(model_config.pretrained)
  if model_config.preset not in qv.PRESETS:
    raise ValueError(f"unknown LVLM preset {model_config.preset!r}; known: {sorted(qv.PRESETS)}")
  cfg = qv.PRESETS[model_config.preset]
  return qv.QwenVL(cfg), cfg, None, proc_lib.Processor.tiny(cfg)


# -------------------------------------------------------------------------------------- batches


def judge_batch(processor, images, max_prompt_len: int, short: bool = True) -> dict:
  """The judge question for each uint8 image, left-padded to max_prompt_len (`prompt_batch`)."""
  return proc_lib.prompt_batch(processor, images, prompts.judge_prompt(short=short), max_prompt_len)


def background_words(emotional_prompt: str) -> str:
  """'..., on a dim muted cool background' -> 'dim muted cool'."""
  head, sep, tail = str(emotional_prompt).rpartition(emoshapes.BACKGROUND_PREFIX)
  if not sep or not tail.endswith(" background"):
    raise ValueError(f"emotional prompt {emotional_prompt!r} does not end in ', on a ... background'")
  return tail[:-len(" background")]


def reasoning(image, emotional_prompt: str) -> str:
  return f"{background_words(emotional_prompt)} background, {emoshapes.colour_words(image)} overall"


def target_text(image, emotional_prompt: str, valence, arousal, category) -> str:
  """The answer SFT teaches for one EmoShapes example (without the end-of-turn token)."""
  return format_answer(float(valence), float(arousal), CATEGORIES[int(category)], reasoning(image, emotional_prompt))


def max_target_tokens(processor) -> int:
  """Tokens of the longest possible SFT target incl. end of turn (exact for the byte tokenizer: the
  longest words, V and A of 4 characters, the longest category name)."""
  words = "bright muted warm"
  text = format_answer(-1.5, -1.5, max(CATEGORIES, key=len), f"{words} background, {words} overall")
  return len(processor.tokenizer.encode(text)) + 1


def target_batch(processor, texts: Sequence[str], target_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Answer texts -> (ids, mask) (B, target_len) int32: text + end of turn, right-padded with pad_id."""
  ids = np.full((len(texts), target_len), processor.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, text in enumerate(texts):
    row = list(processor.tokenizer.encode(text)) + [processor.eos_ids[0]]
    if len(row) > target_len:
      raise ValueError(f"target {i} is {len(row)} tokens, over target_len={target_len}: {text!r}")
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return ids, mask


def sft_batch(processor, raw: dict, max_prompt_len: int, target_len: int) -> dict[str, np.ndarray]:
  """A loader batch (uint8 images, emotional prompts, V, A, category) -> numpy model inputs.
  pixel_values is (B, patches per image, patch_dim) so sharding the batch axis keeps each image's
  patches with its row; the step flattens it back (all images share one size, hence one grid)."""
  images = np.asarray(raw["image"])
  p = judge_batch(processor, images, max_prompt_len)
  texts = [target_text(im, ep, v, a, c) for im, ep, v, a, c in
           zip(images, raw["emotional_prompt"], raw["valence"], raw["arousal"], raw["category"])]
  ids, mask = target_batch(processor, texts, target_len)
  return {"input_ids": p["input_ids"], "attention_mask": p["attention_mask"],
          "pixel_values": p["pixel_values"].reshape(len(images), -1, p["pixel_values"].shape[-1]),
          "target_ids": ids, "target_mask": mask}


def data_config(seed: int) -> ml_collections.ConfigDict:
  """config.data of the LVLM jobs: which EmoShapes world they train on, and its noise augmentation."""
  d = ml_collections.ConfigDict()
  d.seed = seed  # EmoShapes world seed of the training images
  d.num_examples = 200_000  # size of the procedural training set
  d.image_size = 32  # EmoShapes image side in pixels
  d.noise_prob = 0.5  # share of training images given Gaussian pixel noise and relabelled (pipeline.PixelNoise)
  d.noise_max_std = 0.4  # the noise std is uniform in [0, noise_max_std] ([0, 1] pixel units)
  return d


def image_loader(d, *, batch_size: int, seed: int, shard_index: int, shard_count: int):
  """Per-host batches of EmoShapes images with their own labels (config.data `d`), noise-augmented."""
  source = emoshapes.EmoShapesSource(d.seed, d.num_examples, size=d.image_size)
  # one row per example with its own image and labels: a GRPO prompt loader with groups of 1
  return pipeline.grpo_prompt_loader(source, prompts_per_step=batch_size // shard_count, group_size=1, seed=seed,
                                     shard_index=shard_index, shard_count=shard_count, target_mode="data",
                                     keep_images=True, pixel_noise=pipeline.PixelNoise(d.noise_prob, d.noise_max_std))


def image_grid(processor, size: int, batch_size: int) -> tuple:
  """The static image_grid_thw of a batch of size x size images."""
  _, grid = processor.image(np.zeros((size, size, processor.image_config.in_channels), np.uint8))
  return (grid,) * batch_size


# ------------------------------------------------------------------------------------ teacher forcing


def target_logits(model: qv.QwenVL, params, batch: dict, grid) -> jax.Array:
  """fp32 logits (B, T, V) predicting each of the T target tokens, from one forward over
  prompt + target (position L - 1 + t predicts target token t). Traceable; grid static."""
  ids = jnp.concatenate([batch["input_ids"], batch["target_ids"]], 1)
  mask = jnp.concatenate([batch["attention_mask"], batch["target_mask"]], 1)
  pixels = batch["pixel_values"].reshape(-1, batch["pixel_values"].shape[-1])
  feats = sampling.image_features(model, params, pixels, grid)
  l, t = batch["input_ids"].shape[1], batch["target_ids"].shape[1]

  def fn(m):
    x, pos, _ = sampling.prompt_inputs(m, ids, mask, feats, grid)
    return m.decode(x, pos, mask)[0][:, l - 1:l + t - 1]

  return model.apply({"params": params}, method=fn).astype(jnp.float32)


def sft_loss(logits, target_ids, target_mask) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, argmax accuracy) over the target tokens of the batch (token mean: every
  answer token weighs the same); prompt, image and padding never enter. fp32 log-softmax."""
  lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(lp, target_ids[..., None], -1)[..., 0]
  m = target_mask.astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  return (nll * m).sum() / n, ((jnp.argmax(lp, -1) == target_ids) * m).sum() / n


# ------------------------------------------------------------------------------------------ judging


def eval_split(seed: int, num_examples: int, size: int = 32, noise_max_std: float = 0.0) -> dict[str, np.ndarray]:
  """Examples 0..n-1 of the EmoShapes world `seed`: images, valence, arousal, category. With
  noise_max_std > 0 every image gets pipeline.PixelNoise (a fixed draw per example) and its labels."""
  noise = pipeline.PixelNoise(1.0, noise_max_std)
  ex = [emoshapes.make_example(seed, i, size) for i in range(num_examples)]
  if noise_max_std > 0:
    ex = [noise.random_map(e, np.random.default_rng((seed, i))) for i, e in enumerate(ex)]
  return {"image": np.stack([e["image"] for e in ex]),
          "valence": np.array([e["valence"] for e in ex], np.float32),
          "arousal": np.array([e["arousal"] for e in ex], np.float32),
          "category": np.array([e["category"] for e in ex], np.int32)}


def judge(model, params, processor, images, *, batch_size: int, max_prompt_len: int, max_new_tokens: int,
          short: bool = True) -> list[str]:
  """Greedy answers (text, special tokens dropped) for uint8 images, in fixed-size jitted batches
  (the last one padded with copies of its final image, whose answers are dropped)."""
  images = np.asarray(images)
  texts = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
    out = sampling.sample(model, params, judge_batch(processor, chunk, max_prompt_len, short), jax.random.key(0),
                          max_new_tokens=max_new_tokens, eos_ids=processor.eos_ids, pad_id=processor.pad_id,
                          temperature=0.0)
    tokens, mask = np.asarray(out["tokens"]), np.asarray(out["mask"])
    texts += [processor.decode(tok[m > 0], skip_special_tokens=True) for tok, m in zip(tokens[:n], mask[:n])]
  return texts


def worst_error(target) -> np.ndarray:
  """The largest |error| an in-range answer can make: the distance to the far end of [-3, 3]."""
  target = np.asarray(target, np.float64)
  return np.maximum(target - VA_MIN, VA_MAX - target)


def answer_metrics(answers: Sequence, valence, arousal, category) -> dict[str, float]:
  """Scores of answers (texts, or Answer/None) against targets; see the module docstring."""
  answers = [a if a is None or isinstance(a, Answer) else parse_answer(a) for a in answers]
  ok = np.array([a is not None for a in answers])
  out = {"n": len(answers), "parse_rate": float(ok.mean()),
         "format_rate": float(np.mean([a is not None and a.well_formed for a in answers]))}
  for name, target in (("valence", valence), ("arousal", arousal)):
    target = np.asarray(target, np.float64)
    pred = np.array([getattr(a, name) if a is not None else np.nan for a in answers])
    err = np.where(ok, np.abs(pred - target), worst_error(target))
    out[f"{name}_mae"] = float(err.mean())
    out[f"{name}_mae_parsed"] = float(err[ok].mean()) if ok.any() else None  # None: nothing parsed
  names = [CATEGORIES[int(c)] for c in np.asarray(category)]
  out["category_acc"] = float(np.mean([a is not None and a.emotion == c for a, c in zip(answers, names)]))
  return out


def mean_baseline(valence, arousal, category) -> dict[str, float]:
  """Scores of answering every image with the split's mean V, mean A and majority category
  (ties: the first in CATEGORIES order); the constants themselves are included."""
  v, a = np.asarray(valence, np.float64), np.asarray(arousal, np.float64)
  counts = np.bincount(np.asarray(category, np.int64), minlength=len(CATEGORIES))
  major = int(np.argmax(counts))
  return {"baseline_valence": float(v.mean()), "baseline_arousal": float(a.mean()),
          "baseline_category": CATEGORIES[major],
          "baseline_valence_mae": float(np.abs(v - v.mean()).mean()),
          "baseline_arousal_mae": float(np.abs(a - a.mean()).mean()),
          "baseline_category_acc": float(counts[major] / max(len(v), 1))}


def evaluate(model, params, processor, split: dict, *, batch_size: int, max_prompt_len: int, max_new_tokens: int,
             short: bool = True) -> dict:
  """Greedy judging of an `eval_split`: answer_metrics + mean_baseline."""
  texts = judge(model, params, processor, split["image"], batch_size=batch_size, max_prompt_len=max_prompt_len,
                max_new_tokens=max_new_tokens, short=short)
  return (answer_metrics(texts, split["valence"], split["arousal"], split["category"])
          | mean_baseline(split["valence"], split["arousal"], split["category"]))
