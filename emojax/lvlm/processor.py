"""Qwen2.5-VL inputs: image -> pixel_values + grid, chat text -> ids with the image placeholder
expanded, and a left-padded prompt batch for `emojax.lvlm.sampling`.

Images follow transformers' Qwen2VLImageProcessor (its PIL/numpy backend, `Qwen2VLImageProcessorPil`
in transformers 5; the torchvision backend, which transformers 5 picks when torchvision is installed,
resizes with torch's antialiased bicubic, a few levels per pixel off PIL's): `smart_resize` to
multiples of patch_size*merge_size within [min_pixels, max_pixels], PIL bicubic on uint8, x/255,
mean/std (CLIP's by default), the single frame repeated temporal_patch_size times, then patches
flattened in the vision tower's order (blocks of merge x merge patches, each patch a (C, T, P, P)
row). A transformers directory's settings are read as transformers 5 reads them (flat or nested:
`ImageConfig.from_directory`). The tiny world's come from the model's VisionConfig, min/max pixels
HF's 56*56 and 28*28*1280 expressed in merged tokens (4 and 1280 tokens of (patch*merge)^2 pixels),
so the tiny world (patch 4, merge 2) keeps a 32x32 image as it is and Qwen2.5-VL's get HF's own.

Text follows Qwen2_5_VLProcessor: each `<|image_pad|>` of the chat text becomes t*h*w/merge^2
copies of itself (one per merged image token) before tokenising. The tiny world's tokenizer is
byte-level (`tokenizers.ByteTokenizer` ids) plus the five chat/vision markers of `emojax.io.tokenizers`; for
real weights `HFChatTokenizer` wraps the checkpoint's own tokenizer files.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from emojax.emotion import prompts
from emojax.models import qwen_vl as qv
from emojax.io import clip_inputs, tokenizers

# transformers.image_utils.OPENAI_CLIP_MEAN / _STD
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
TINY_SPECIALS = {IM_START: tokenizers.IM_START_ID, IM_END: tokenizers.IM_END_ID, VISION_START: tokenizers.VISION_START_ID,
                 VISION_END: tokenizers.VISION_END_ID, IMAGE_PAD: tokenizers.IMAGE_PAD_ID}

Grid = tuple[int, int, int]
_BYTE_OFFSET = tokenizers.VOCAB_SIZE - 256  # ByteTokenizer: byte b -> b + 3


# ------------------------------------------------------------------------------------------------ images


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """The fields of a Qwen2-VL preprocessor_config.json that change the output (defaults: HF's)."""

  patch_size: int = 14
  merge_size: int = 2
  temporal_patch_size: int = 2
  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280
  in_channels: int = 3
  image_mean: tuple[float, ...] = CLIP_MEAN
  image_std: tuple[float, ...] = CLIP_STD

  @property
  def factor(self) -> int:
    return self.patch_size * self.merge_size

  @classmethod
  def for_model(cls, config: qv.QwenVLConfig, **overrides) -> "ImageConfig":
    vc = config.vision_config
    factor = vc.patch_size * vc.spatial_merge_size
    kw = dict(patch_size=vc.patch_size, merge_size=vc.spatial_merge_size, temporal_patch_size=vc.temporal_patch_size,
              in_channels=vc.in_channels, min_pixels=4 * factor ** 2, max_pixels=1280 * factor ** 2)
    return cls(**{**kw, **overrides})

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str = "preprocessor config") -> "ImageConfig":
    """Image processor settings -> config: min/max_pixels (or transformers 5's size dict), sizes, mean/std.
    Switched-off steps (do_resize etc. false) are not supported: the vision tower was trained with them."""
    off = [k for k in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb") if d.get(k) is False]
    if off or d.get("rescale_factor", 1 / 255) != 1 / 255:
      raise ValueError(f"{source} switches off {off or 'rescale_factor=1/255'}: not supported")
    size = d.get("size") or {}
    kw = dict(min_pixels=d.get("min_pixels", size.get("shortest_edge")),
              max_pixels=d.get("max_pixels", size.get("longest_edge")),
              patch_size=d.get("patch_size"), merge_size=d.get("merge_size"),
              temporal_patch_size=d.get("temporal_patch_size"),
              image_mean=tuple(d["image_mean"]) if "image_mean" in d else None,
              image_std=tuple(d["image_std"]) if "image_std" in d else None)
    return cls(**{k: v for k, v in kw.items() if v is not None})

  @classmethod
  def from_directory(cls, directory, **overrides) -> "ImageConfig":
    """A transformers directory's settings, flat or nested as transformers 5 reads them
    (`clip_inputs.image_processor_dict`); no settings file is an error, not HF's defaults."""
    d, source = clip_inputs.image_processor_dict(directory)
    return dataclasses.replace(cls.from_hf_dict(d, source), **overrides)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
  """transformers' smart_resize: sides rounded to multiples of factor, area brought into
  [min_pixels, max_pixels] keeping the aspect ratio as closely as possible."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"image {height}x{width}: aspect ratio above 200 is not supported (Qwen2.5-VL's limit)")
  h, w = round(height / factor) * factor, round(width / factor) * factor
  if h * w > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h = max(factor, math.floor(height / beta / factor) * factor)
    w = max(factor, math.floor(width / beta / factor) * factor)
  elif h * w < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
  return h, w


def check_image(image, channels: int = 3, what: str = "image") -> np.ndarray:
  """uint8 (H, W, C) or one clear ValueError. Integer arrays within [0, 255] are accepted (cast)."""
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"{what} must be (H, W, {channels}) uint8; got shape {image.shape}")
  if image.shape[-1] != channels:
    raise ValueError(f"{what} must have {channels} channels (H, W, {channels}); got shape {image.shape}")
  if image.dtype != np.uint8:
    if not np.issubdtype(image.dtype, np.integer):
      raise ValueError(f"{what} must be uint8 in [0, 255]; got dtype {image.dtype} (convert floats with "
                       f"emojax.io.images.to_uint8)")
    lo, hi = int(image.min()), int(image.max())
    if lo < 0 or hi > 255:
      raise ValueError(f"{what} has values in [{lo}, {hi}]; uint8 values in [0, 255] expected")
    image = image.astype(np.uint8)
  return image


def preprocess_image(image, config: ImageConfig) -> tuple[np.ndarray, Grid]:
  """uint8 (H, W, C) -> (pixel_values (t*h*w, C*T*P*P) float32, grid (1, h, w)), as Qwen2VLImageProcessor."""
  image = check_image(image, config.in_channels)
  height, width = smart_resize(*image.shape[:2], config.factor, config.min_pixels, config.max_pixels)
  if (height, width) != image.shape[:2]:
    from PIL import Image
    image = np.asarray(Image.fromarray(image).resize((width, height), resample=Image.BICUBIC))
  x = (image.astype(np.float64) * (1 / 255)).astype(np.float32)  # HF's rescale: float64 product, float32 out
  x = (x - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
  p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
  gh, gw = height // p, width // p
  x = x.transpose(2, 0, 1).reshape(-1, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
  x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))  # (gh/m, gw/m, m, m, C, T, P, P)
  return np.ascontiguousarray(x.reshape(gh * gw, -1), dtype=np.float32), (1, gh, gw)


# ------------------------------------------------------------------------------------------------- text


def _split_specials(text: str, specials: Sequence[str]) -> list[str]:
  """text -> pieces, each special string its own piece (leftmost-longest match)."""
  out, i, start = [], 0, 0
  while i < len(text):
    hit = next((s for s in sorted(specials, key=len, reverse=True) if text.startswith(s, i)), None)
    if hit is None:
      i += 1
      continue
    if start < i:
      out.append(text[start:i])
    out.append(hit)
    i = start = i + len(hit)
  if start < len(text):
    out.append(text[start:])
  return out


def expand_image_pads(text: str, num_image_tokens: Sequence[int]) -> str:
  """Each <|image_pad|> -> that image's number of merged tokens of itself, in order (Qwen2_5_VLProcessor)."""
  parts = text.split(IMAGE_PAD)
  if len(parts) - 1 != len(num_image_tokens):
    raise ValueError(f"text has {len(parts) - 1} {IMAGE_PAD} but {len(num_image_tokens)} images were given")
  return parts[0] + "".join(IMAGE_PAD * n + rest for n, rest in zip(num_image_tokens, parts[1:]))


class TinyChatTokenizer:
  """The tiny world's chat tokenizer: ByteTokenizer's byte ids (+3), the five markers as single ids.
  No BOS (Qwen's chat text starts with <|im_start|>); pad is ByteTokenizer's 0."""

  pad_id = tokenizers.PAD_ID
  eos_ids = (tokenizers.IM_END_ID,)
  image_token_id = tokenizers.IMAGE_PAD_ID
  vocab_size = tokenizers.TINY_CHAT_VOCAB_SIZE
  _names = {i: s for s, i in TINY_SPECIALS.items()}

  def encode(self, text: str) -> list[int]:
    ids = []
    for piece in _split_specials(text, list(TINY_SPECIALS)):
      if piece in TINY_SPECIALS:
        ids.append(TINY_SPECIALS[piece])
      else:
        ids.extend(b + _BYTE_OFFSET for b in piece.encode("utf-8"))
    return ids

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    """Markers -> their strings (dropped with skip_special_tokens); pad/bos/eos -> nothing."""
    out, buf = [], bytearray()
    for i in np.asarray(ids).reshape(-1).tolist():
      if _BYTE_OFFSET <= i < tokenizers.VOCAB_SIZE:
        buf.append(i - _BYTE_OFFSET)
      elif i in self._names:
        out.append(buf.decode("utf-8", errors="replace"))
        buf = bytearray()
        if not skip_special_tokens:
          out.append(self._names[i])
    return "".join(out) + buf.decode("utf-8", errors="replace")


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


class HFChatTokenizer:
  """A Qwen2.5-VL checkpoint's tokenizer (transformers AutoTokenizer, local files only) behind the
  TinyChatTokenizer interface. End of turn is <|im_end|>, and <|endoftext|> (what the checkpoint's
  generation_config lists too); pad is the tokenizer's pad token (<|endoftext|> for Qwen)."""

  def __init__(self, directory):
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"tokenizer directory {directory} not found: put the Qwen2.5-VL checkpoint's "
                              f"tokenizer files (tokenizer.json, tokenizer_config.json) there")
    if not any(os.path.isfile(os.path.join(directory, f)) for f in _TOKENIZER_FILES):
      raise FileNotFoundError(f"no tokenizer.json (or vocab.json + merges.txt) in {directory}: copy the "
                              f"Qwen2.5-VL checkpoint's tokenizer files there")
    from transformers import AutoTokenizer
    self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    vocab = self.tokenizer.get_vocab()
    missing = [s for s in (IM_START, IM_END, ENDOFTEXT, VISION_START, VISION_END, IMAGE_PAD) if s not in vocab]
    if missing:
      raise ValueError(f"tokenizer in {directory} lacks the Qwen chat/vision tokens {missing}")
    self.image_token_id = vocab[IMAGE_PAD]
    self.eos_ids = (vocab[IM_END], vocab[ENDOFTEXT])
    pad = self.tokenizer.pad_token_id
    self.pad_id = vocab[ENDOFTEXT] if pad is None else int(pad)
    self.vocab_size = len(self.tokenizer)

  def encode(self, text: str) -> list[int]:
    return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode(np.asarray(ids).reshape(-1).tolist(), skip_special_tokens=skip_special_tokens)


# -------------------------------------------------------------------------------------------- processor


class Processor:
  """Images + chat text -> model inputs, for one model config (image sizes, image token id)."""

  def __init__(self, image_config: ImageConfig, tokenizer):
    self.image_config, self.tokenizer = image_config, tokenizer

  @classmethod
  def tiny(cls, config: qv.QwenVLConfig = qv.PRESETS["tiny"], **image_overrides) -> "Processor":
    if config.image_token_id != tokenizers.IMAGE_PAD_ID or config.vocab_size < tokenizers.TINY_CHAT_VOCAB_SIZE:
      raise ValueError(f"config (image_token_id {config.image_token_id}, vocab {config.vocab_size}) is not a tiny-"
                       f"world LVLM: the byte tokenizer needs image_token_id {tokenizers.IMAGE_PAD_ID} and vocab >= "
                       f"{tokenizers.TINY_CHAT_VOCAB_SIZE}")
    return cls(ImageConfig.for_model(config, **image_overrides), TinyChatTokenizer())

  @classmethod
  def from_pretrained(cls, directory, config: qv.QwenVLConfig | None = None) -> "Processor":
    """A transformers Qwen2.5-VL directory: tokenizer files, the image processor settings
    (`ImageConfig.from_directory`), config.json for the model config if not given. emojax's own LVLM
    exports hold no tokenizer or image settings: `Processor.tiny` serves them (`judge.load_lvlm`)."""
    directory = os.fspath(directory)
    tok = HFChatTokenizer(directory)
    if config is None:
      path = os.path.join(directory, "config.json")
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: expected a transformers Qwen2.5-VL directory")
      with open(path) as f:
        config = qv.QwenVLConfig.from_hf_dict(json.load(f))
    image = ImageConfig.from_directory(directory, in_channels=config.vision_config.in_channels)
    if tok.image_token_id != config.image_token_id:
      raise ValueError(f"tokenizer's {IMAGE_PAD} id {tok.image_token_id} != config image_token_id "
                       f"{config.image_token_id}")
    return cls(image, tok)

  @property
  def is_tiny(self) -> bool:
    """The tiny world's byte-level chat tokenizer (an emojax LVLM export), not a checkpoint's own."""
    return isinstance(self.tokenizer, TinyChatTokenizer)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return tuple(self.tokenizer.eos_ids)

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  def image(self, image) -> tuple[np.ndarray, Grid]:
    return preprocess_image(image, self.image_config)

  def num_image_tokens(self, grid: Grid) -> int:
    t, h, w = grid
    return t * h * w // self.image_config.merge_size ** 2

  def encode(self, text: str, grids: Sequence[Grid] = ()) -> np.ndarray:
    """Chat text with one <|image_pad|> per image of `grids` -> int32 ids, placeholders expanded."""
    return np.asarray(self.tokenizer.encode(expand_image_pads(text, [self.num_image_tokens(g) for g in grids])),
                      np.int32)

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def prompt_batch(processor: Processor, images, user_texts, max_prompt_len: int, system: str | None = None) -> dict:
  """B images (uint8 (B, H, W, C)) and B user turns -> one-image chat prompts, left-padded to
  max_prompt_len (a fixed length keeps jitted shapes fixed):
  dict(input_ids (B, L) int32, attention_mask (B, L) int32, pixel_values (B*N, C*T*P*P) float32,
  image_grid_thw ((1, h, w),) * B -- a static tuple)."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be a (B, H, W, C) uint8 batch; got shape {images.shape}")
  user_texts = [user_texts] * len(images) if isinstance(user_texts, str) else list(user_texts)
  if len(user_texts) != len(images):
    raise ValueError(f"{len(images)} images but {len(user_texts)} user texts")
  pixels, grids = zip(*(processor.image(check_image(im, processor.image_config.in_channels, f"images[{i}]"))
                        for i, im in enumerate(images)))
  ids = np.full((len(images), max_prompt_len), processor.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, (text, grid) in enumerate(zip(user_texts, grids)):
    row = processor.encode(prompts.chat_text(text, system), [grid])
    if len(row) > max_prompt_len:
      n_image = processor.num_image_tokens(grid)
      raise ValueError(f"prompt {i} is {len(row)} tokens ({n_image} image + {len(row) - n_image} text), "
                       f"{len(row) - max_prompt_len} over max_prompt_len={max_prompt_len}")
    ids[i, max_prompt_len - len(row):], mask[i, max_prompt_len - len(row):] = row, 1
  return dict(input_ids=ids, attention_mask=mask, pixel_values=np.concatenate(pixels), image_grid_thw=tuple(grids))


def image_grid(processor: Processor, size: int, batch_size: int) -> tuple:
  """The static image_grid_thw of a batch of size x size images."""
  _, grid = processor.image(np.zeros((size, size, processor.image_config.in_channels), np.uint8))
  return (grid,) * batch_size


def target_batch(processor: Processor, texts: Sequence[str], target_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Answer texts -> (ids, mask) (B, target_len) int32: text + end of turn, right-padded with pad_id
  (the layout `sampling.target_logits` teacher-forces and `sampling.sample` generates)."""
  ids = np.full((len(texts), target_len), processor.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for i, text in enumerate(texts):
    row = list(processor.tokenizer.encode(text)) + [processor.eos_ids[0]]
    if len(row) > target_len:
      raise ValueError(f"target {i} is {len(row)} tokens, over target_len={target_len}: {text!r}")
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return ids, mask
