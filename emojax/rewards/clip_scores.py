"""Scores of a CLIP model over uint8 images and prompts, in one place: PickScore, CLIP-Score, CLIP-IQA.

  scorer = ClipScorer.from_pretrained(DIR)           # a transformers CLIP directory, e.g. PickScore_v1
  scorer.pickscore(images, prompts)                  # logit_scale.exp() · cos(text, image)
  scorer.clip_score(images, prompts)                 # 100 · max(cos, 0)   (torchmetrics' CLIPScore)
  scorer.clip_iqa(images)                            # softmax(100 · cos(image, pair))[0]   (CLIP-IQA)

`images` is (N, H, W, 3) uint8, `prompts` N strings; each returns a float32 numpy array (N,).
CLIP-IQA follows torchmetrics' `clip_image_quality_assessment`: the cosine of the image to each
prompt of an antonym pair ("Good photo." / "Bad photo." by default; the tiny world's preference
model has its own), times 100, softmaxed over the pair; the probability of the first.

Images and prompts are embedded in fixed-size jitted batches (the last one padded), images
preprocessed as CLIPImageProcessor does and prompts tokenised by the directory's tokenizer
(`emojax.io.clip_inputs`).
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import numpy as np

from emojax.io import clip_inputs
from emojax.models import clip as clip_lib

DEFAULT_IQA_PAIR = ("Good photo.", "Bad photo.")
SHIPPED_PREFERENCE = "pickscore_tiny"  # emojax/assets/pickscore_tiny: configs/pretrain_preference.py


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
  """fn over fixed-size batches of x's rows (the last padded with copies of the final row)."""
  out = []
  for start in range(0, len(x), batch_size):
    chunk = x[start:start + batch_size]
    n = len(chunk)
    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)]) if n < batch_size else chunk
    out.append(np.asarray(fn(chunk))[:n])
  return np.concatenate(out)


class ClipScorer:

  def __init__(self, model: clip_lib.CLIP, params, tokenizer: clip_inputs.Tokenizer,
               image_config: clip_inputs.ImageConfig, batch_size: int = 32):
    self.model, self.params, self.tokenizer, self.image_config = model, params, tokenizer, image_config
    self.batch_size = int(batch_size)
    v = model.config.vision
    if (image_config.crop_height, image_config.crop_width) != (v.image_size, v.image_size):
      raise ValueError(f"preprocessor crop {image_config.crop_height}x{image_config.crop_width} does not match the "
                       f"vision tower's image_size {v.image_size}")
    self._images = jax.jit(lambda p, px: model.apply({"params": p}, px, method=clip_lib.CLIP.image_embeds))
    self._texts = jax.jit(lambda p, ids, m: model.apply({"params": p}, ids, m, method=clip_lib.CLIP.text_embeds))

  @classmethod
  def from_pretrained(cls, directory, batch_size: int = 32) -> "ClipScorer":
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"CLIP directory {directory} does not exist: put a transformers CLIP directory "
                              "(config.json, model.safetensors, tokenizer files, preprocessor_config.json or a "
                              "transformers 5 processor_config.json) there")
    model, params = clip_lib.from_pretrained(directory)
    tokenizer = clip_inputs.Tokenizer(directory, model.config.text.max_position_embeddings)
    return cls(model, jax.device_put(params), tokenizer, clip_inputs.ImageConfig.from_directory(directory), batch_size)

  @property
  def logit_scale(self) -> float:
    return float(np.exp(np.asarray(self.params["logit_scale"])))

  def image_embeds(self, images) -> np.ndarray:
    """L2-normalised image features (N, D) of uint8 images."""
    pixels = clip_inputs.preprocess(images, self.image_config)
    return _batched(lambda px: self._images(self.params, px), pixels, self.batch_size)

  @functools.lru_cache(maxsize=64)
  def _text_embeds_cached(self, prompts: tuple[str, ...]) -> np.ndarray:
    ids, mask = self.tokenizer(prompts)
    both = np.concatenate([ids, mask], 1)
    n = ids.shape[1]
    return _batched(lambda x: self._texts(self.params, x[:, :n], x[:, n:]), both, self.batch_size)

  def text_embeds(self, prompts: Sequence[str]) -> np.ndarray:
    """L2-normalised text features (N, D) of prompts (the last 64 prompt lists are cached)."""
    prompts = tuple(str(p) for p in prompts)
    if not prompts:
      raise ValueError("no prompts given")
    return self._text_embeds_cached(prompts)

  def cosine(self, images, prompts: Sequence[str]) -> np.ndarray:
    """cos(image_i, prompt_i), (N,) float32."""
    images = clip_inputs.check_images(images)
    if len(prompts) != len(images):
      raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    return np.sum(self.image_embeds(images) * self.text_embeds(prompts), -1).astype(np.float32)

  def pickscore(self, images, prompts: Sequence[str]) -> np.ndarray:
    """PickScore's raw score: exp(logit_scale) · cos(text, image)."""
    return (self.logit_scale * self.cosine(images, prompts)).astype(np.float32)

  def clip_score(self, images, prompts: Sequence[str]) -> np.ndarray:
    """torchmetrics' CLIPScore per image: 100 · max(cos, 0)."""
    return (100.0 * np.maximum(self.cosine(images, prompts), 0.0)).astype(np.float32)

  def clip_iqa(self, images, prompts: Sequence[str] = DEFAULT_IQA_PAIR) -> np.ndarray:
    """CLIP-IQA: P(first of the antonym pair) from softmax(100 · cos) over the pair."""
    if len(prompts) != 2:
      raise ValueError(f"CLIP-IQA takes one antonym pair (positive, negative), got {len(prompts)} prompts")
    logits = 100.0 * self.image_embeds(clip_inputs.check_images(images)) @ self.text_embeds(prompts).T
    return np.asarray(jax.nn.softmax(logits, -1)[:, 0], np.float32)


class PickScoreReward:
  """Host reward "pickscore": PickScore of generated images ([-1, 1], quantised as PNGs are) for their
  prompts, divided by `scale` (26 for PickScore_v1, as Flow-GRPO does, which puts it near [0, 1]);
  the CLIP-IQA probability of the model's quality pair is logged beside it."""

  def __init__(self, scorer: ClipScorer, scale: float, iqa_pair: tuple[str, str]):
    self.scorer, self.scale, self.iqa_pair = scorer, float(scale), tuple(iqa_pair)

  @classmethod
  def from_config(cls, c) -> "PickScoreReward":
    """c: `config_utils.preference_model()` fields (path, scale, iqa_pair, batch_size)."""
    from emojax.io import assets
    path = c.path or assets.asset_dir(SHIPPED_PREFERENCE)
    return cls(ClipScorer.from_pretrained(path, batch_size=c.batch_size), c.scale, tuple(c.iqa_pair))

  def __call__(self, images, batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from emojax.io.images import to_uint8
    images = to_uint8(images)
    raw = self.scorer.pickscore(images, [str(p) for p in batch["prompt"]])
    return raw / np.float32(self.scale), {"raw": raw, "clip_iqa": self.scorer.clip_iqa(images, self.iqa_pair)}
