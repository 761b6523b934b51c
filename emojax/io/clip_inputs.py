"""CLIP inputs from a transformers CLIP directory: uint8 images -> pixel_values, prompts -> token ids.

Images follow transformers' CLIPImageProcessor (its PIL backend, `CLIPImageProcessorPil`): resize so
the shortest side is `size.shortest_edge` (the long side int(shortest · long / short)) with PIL
bicubic on the uint8 image, centre crop to `crop_size` (zero-padded if the image is smaller), x/255,
normalise by the directory's image_mean / image_std; read as transformers 5 reads them
(`image_processor_dict`), with transformers' defaults for what the file leaves out. Output is NHWC
float32 (transformers' NCHW, transposed).

Prompts are tokenised by the directory's own tokenizer through transformers (local files only),
padded to the text tower's max_position_embeddings and truncated there, so every batch has one shape.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers.image_utils.OPENAI_CLIP_MEAN
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
PROCESSOR_FILE, IMAGE_PROCESSOR_FILE = "processor_config.json", "preprocessor_config.json"


def image_processor_dict(directory) -> tuple[dict, str]:
  """(image processor settings, where they came from) of a transformers directory: processor_config.json's
  nested "image_processor" (a transformers 5 processor.save_pretrained, which writes no
  preprocessor_config.json) or the flat preprocessor_config.json (image_processor.save_pretrained, and
  checkpoints made before transformers 5). With both, the nested entry wins, as in transformers 5's
  get_image_processor_dict; a processor_config.json without one (older processors) defers to the flat file."""
  directory = os.fspath(directory)
  path = os.path.join(directory, PROCESSOR_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      nested = json.load(f).get("image_processor")
    if nested is not None:
      if not isinstance(nested, dict):
        raise ValueError(f"{path}: \"image_processor\" is {type(nested).__name__}, not the settings dict")
      return nested, f"{path}[image_processor]"
  path = os.path.join(directory, IMAGE_PROCESSOR_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f), path
  raise FileNotFoundError(f"no image processor settings in {directory}: looked for {IMAGE_PROCESSOR_FILE} and an "
                          f"\"image_processor\" entry in {PROCESSOR_FILE}")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  shortest_edge: int = 224
  crop_height: int = 224
  crop_width: int = 224
  image_mean: tuple = CLIP_MEAN
  image_std: tuple = CLIP_STD
  do_resize: bool = True
  do_center_crop: bool = True

  @classmethod
  def from_directory(cls, directory) -> "ImageConfig":
    d, path = image_processor_dict(directory)
    size, crop = d.get("size", {"shortest_edge": 224}), d.get("crop_size", {"height": 224, "width": 224})
    if isinstance(size, int):
      size = {"shortest_edge": size}
    if isinstance(crop, int):
      crop = {"height": crop, "width": crop}
    if "shortest_edge" not in size:
      raise ValueError(f"{path}: size {size} has no shortest_edge (CLIPImageProcessor resizes the shortest side)")
    return cls(shortest_edge=int(size["shortest_edge"]), crop_height=int(crop["height"]), crop_width=int(crop["width"]),
               image_mean=tuple(d.get("image_mean", CLIP_MEAN)), image_std=tuple(d.get("image_std", CLIP_STD)),
               do_resize=bool(d.get("do_resize", True)), do_center_crop=bool(d.get("do_center_crop", True)))

  def to_hf_dict(self) -> dict:
    """preprocessor_config.json of transformers' CLIPImageProcessor for this config."""
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": self.do_resize,
            "size": {"shortest_edge": self.shortest_edge}, "resample": 3, "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(self.image_mean),
            "image_std": list(self.image_std), "do_convert_rgb": True}

  def save(self, directory) -> None:
    with open(os.path.join(os.fspath(directory), IMAGE_PROCESSOR_FILE), "w") as f:
      json.dump(self.to_hf_dict(), f, indent=1)


def check_images(images) -> np.ndarray:
  """(N, H, W, 3) uint8, or a one-line ValueError saying what is wrong."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (N, H, W, 3); got dtype {images.dtype} (quantise [-1, 1] floats "
                     "with emojax.io.images.to_uint8)")
  if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
    raise ValueError(f"images must be a non-empty (N, H, W, 3) uint8 batch; got shape {images.shape}")
  return images


def _resize_shape(h: int, w: int, shortest: int) -> tuple[int, int]:
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(shortest * long / short)
  return (new_long, shortest) if w <= h else (shortest, new_long)


def _center_crop(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
  h, w = x.shape[:2]
  top, left = (h - ch) // 2, (w - cw) // 2
  if top >= 0 and left >= 0:
    return x[top:top + ch, left:left + cw]
  out_h, out_w = max(ch, h), max(cw, w)  # too small: zero-pad to at least the crop, then crop
  padded = np.zeros((out_h, out_w, x.shape[2]), x.dtype)
  t, l = -(-(out_h - h) // 2), -(-(out_w - w) // 2)
  padded[t:t + h, l:l + w] = x
  top, left = (out_h - ch) // 2, (out_w - cw) // 2
  return padded[top:top + ch, left:left + cw]


def preprocess(images, config: ImageConfig) -> np.ndarray:
  """uint8 (N, H, W, 3) -> pixel_values (N, crop_h, crop_w, 3) float32."""
  from PIL import Image
  images = check_images(images)
  mean, std = np.asarray(config.image_mean, np.float32), np.asarray(config.image_std, np.float32)
  out = []
  for im in images:
    if config.do_resize:
      h, w = _resize_shape(im.shape[0], im.shape[1], config.shortest_edge)
      if (h, w) != im.shape[:2]:
        im = np.asarray(Image.fromarray(im).resize((w, h), resample=Image.BICUBIC))
    if config.do_center_crop:
      im = _center_crop(im, config.crop_height, config.crop_width)
    out.append((im.astype(np.float32) * np.float32(1 / 255) - mean) / std)
  return np.stack(out)


class Tokenizer:
  """The CLIP directory's tokenizer (transformers AutoTokenizer, local files only) -> fixed-length ids."""

  def __init__(self, directory, max_length: int, tokenizer=None):
    self.max_length = int(max_length)
    if tokenizer is not None:  # an already loaded transformers tokenizer (e.g. one being trained)
      self.tokenizer = tokenizer
      return
    directory = os.fspath(directory)
    if not any(os.path.isfile(os.path.join(directory, f)) for f in _TOKENIZER_FILES):
      raise FileNotFoundError(f"no tokenizer.json (or vocab.json + merges.txt) in {directory}: copy the CLIP "
                              "checkpoint's tokenizer files there")
    from transformers import AutoTokenizer
    self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), each (B, max_length) int32."""
    if isinstance(prompts, str):
      prompts = [prompts]
    out = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                         return_tensors="np")
    return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)
