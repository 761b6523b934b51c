"""EmoSet-VA: EmoSet-118K as users download it, with continuous valence / arousal and two prompts per image,
as a TFDS builder writing array_record (no TensorFlow needed; read with `tfds.data_source("emoset_va", ...)`).

  from emojax.data import emoset  # registers the builder
  emoset.prepare(D, EMOSET_DIR, config="64")        # or tfds.builder("emoset_va/64", ...).download_and_prepare
  tfds.data_source("emoset_va/64", data_dir=D)      # {"train", "validation", "test"}: random access for grain

EMOSET_DIR is the unpacked EmoSet-118K archive: `info.json`, `train.json` / `val.json` / `test.json` (entries
`[emotion, "image/<emotion>/<emotion>_NNNNN.jpg", "annotation/<emotion>/<emotion>_NNNNN.json"]`), and the image
and annotation trees. An annotation always has image_id, emotion, brightness and colorfulness; scene, object (a
list), facial_expression and human_action only when present.

V and A: EmoSet labels 8 Mikels categories, not V-A. Each image gets (V, A) ~ N(centroid, VA_STD²) clipped to
[-3, 3], the centroid being the category's in `emojax.emotion.space.CATEGORY_CENTROIDS` (Russell's circumplex
and NRC-VAD word ratings, as documented there), drawn from a generator seeded by (builder config seed,
crc32(image_id)): the same image gets the same V-A in every build and split order.

Prompts (templates below): the neutral one names the content (objects, else the scene, else "a scene"); the
emotional one adds the category's adjective and the brightness and colourfulness words.

Images: centre-cropped to a square and resized (bicubic) to the config's size, stored as uint8 tensors. An
image that cannot be decoded is skipped, counted, and reported at the end of its split as a warning.
"""
from __future__ import annotations

import json
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from emojax.emotion.space import CATEGORIES, CATEGORY_CENTROIDS, VA_MAX, VA_MIN
from emojax.data import sources
from emojax.io.images import load_square

VA_STD = 0.6  # spread of an image's (V, A) around its category's centroid (a tenth of the range)
SPLITS = {"train": "train.json", "validation": "val.json", "test": "test.json"}
SIZES = (32, 64, 256, 512)  # 32: the tiny LVLM's input side
SEEDS = (0, 1, 2)  # V-A draws: config "64" is seed 0, "64_seed1" seed 1
EMOTIONAL_WORDS = {"amusement": "amusing", "awe": "awe-inspiring", "contentment": "peaceful",
                   "excitement": "exciting", "anger": "angry", "disgust": "disgusting", "fear": "frightening",
                   "sadness": "sad"}


def level(value: float, words: tuple[str, str, str]) -> str:
  """A [0, 1] attribute score in thirds -> (low, middle, high) word."""
  return words[0] if value < 1 / 3 else words[1] if value < 2 / 3 else words[2]


def neutral_prompt(ann: dict) -> str:
  """'a photo of <objects>[ in a <scene>]', or of the scene, or 'a photo of a scene'."""
  objects = [o for o in ann.get("object") or [] if o]
  scene = ann.get("scene")
  if objects:
    text = "a photo of " + ", ".join(objects[:3])
    return text + (f" in a {scene}" if scene else "")
  return f"a photo of a {scene}" if scene else "a photo of a scene"


def emotional_prompt(ann: dict, category: str) -> str:
  """The neutral prompt + ', <adjective>, <brightness> and <colourfulness>' (+ the face and action if given)."""
  text = (f"{neutral_prompt(ann)}, {EMOTIONAL_WORDS[category]}, "
          f"{level(float(ann['brightness']), ('dark', 'moderately lit', 'bright'))} and "
          f"{level(float(ann['colorfulness']), ('muted', 'moderately colourful', 'vivid'))}")
  extras = [ann.get("facial_expression"), ann.get("human_action")]
  return text + "".join(f", {e}" for e in extras if e)


def sample_va(image_id: str, category: str, seed: int) -> tuple[float, float]:
  """(V, A) ~ N(CATEGORY_CENTROIDS[category], VA_STD²) clipped to [-3, 3], fixed by (seed, image_id)."""
  rng = np.random.default_rng((seed, zlib.crc32(image_id.encode())))
  v, a = rng.normal(CATEGORY_CENTROIDS[CATEGORIES.index(category)], VA_STD)
  return float(np.clip(v, VA_MIN, VA_MAX)), float(np.clip(a, VA_MIN, VA_MAX))


def check_manual_dir(manual_dir) -> None:
  need = ["info.json", *SPLITS.values()]
  missing = [f for f in need if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise FileNotFoundError(
        f"EmoSet manual_dir {manual_dir} lacks {', '.join(missing)}: unpack EmoSet-118K there so that it holds "
        f"{', '.join(need)}, image/<emotion>/<emotion>_NNNNN.jpg and annotation/<emotion>/<emotion>_NNNNN.json")


def split_entries(manual_dir, split_file: str) -> list[tuple[str, str, str]]:
  """The split list as (emotion, image path, annotation path), every file checked to exist (one-line error)."""
  with open(os.path.join(manual_dir, split_file)) as f:
    entries = json.load(f)
  out = []
  for i, entry in enumerate(entries):
    if not (isinstance(entry, list) and len(entry) == 3 and entry[0] in CATEGORIES):
      raise ValueError(f"{split_file} entry {i} is {entry!r}: expected [emotion, image path, annotation path] "
                       f"with emotion in {CATEGORIES}")
    for path in entry[1:]:
      if not os.path.isfile(os.path.join(manual_dir, path)):
        raise FileNotFoundError(f"{split_file} entry {i} names {path}, which is not in {manual_dir}")
    out.append(tuple(entry))
  return out


def examples(manual_dir, split_file: str, size: int, seed: int):
  """(key, example) for every readable image of a split; undecodable images are skipped and reported."""
  skipped = []
  for emotion, image_path, ann_path in split_entries(manual_dir, split_file):
    with open(os.path.join(manual_dir, ann_path)) as f:
      ann = json.load(f)
    try:
      image = load_square(os.path.join(manual_dir, image_path), size)
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError; truncated files too
      skipped.append(f"{image_path} ({type(e).__name__})")
      continue
    image_id = str(ann.get("image_id") or os.path.splitext(os.path.basename(image_path))[0])
    v, a = sample_va(image_id, emotion, seed)
    yield image_id, {
        "image": image, "image_id": image_id, "category": emotion, "valence": v, "arousal": a,
        "brightness": float(ann["brightness"]), "colorfulness": float(ann["colorfulness"]),
        "scene": ann.get("scene") or "", "objects": [o for o in ann.get("object") or [] if o],
        "facial_expression": ann.get("facial_expression") or "", "human_action": ann.get("human_action") or "",
        "prompt": neutral_prompt(ann), "emotional_prompt": emotional_prompt(ann, emotion)}
  if skipped:
    logging.warning("emoset_va %s: skipped %d undecodable image(s): %s", split_file, len(skipped),
                    "; ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else ""))


def prepare(data_dir, manual_dir, config: str = "64"):
  """Builds emoset_va/<config> into data_dir from manual_dir (checked first: one line naming what is missing)."""
  return sources.build("emoset_va", data_dir, config, manual_dir, check_manual_dir)


class EmoSetConfig(tfds.core.BuilderConfig):
  def __init__(self, *, size: int, seed: int = 0, **kw):
    super().__init__(name=f"{size}" + (f"_seed{seed}" if seed else ""),
                     description=f"{size}x{size} images, V-A seed {seed}", **kw)
    self.size, self.seed = size, seed


class EmosetVa(tfds.core.GeneratorBasedBuilder):
  """EmoSet-118K with continuous V-A and neutral / emotional prompts (emojax.data.emoset)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [EmoSetConfig(size=s, seed=seed) for seed in SEEDS for s in SIZES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Unpack EmoSet-118K into manual_dir: info.json, train.json, val.json, "
                                  "test.json, image/ and annotation/.")

  def _info(self):
    f = tfds.features
    s = self.builder_config.size
    return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
        "image": f.Tensor(shape=(s, s, 3), dtype=np.uint8), "image_id": f.Text(),
        "category": f.ClassLabel(names=CATEGORIES), "valence": f.Scalar(np.float32),
        "arousal": f.Scalar(np.float32), "brightness": f.Scalar(np.float32), "colorfulness": f.Scalar(np.float32),
        "scene": f.Text(), "objects": f.Sequence(f.Text()), "facial_expression": f.Text(),
        "human_action": f.Text(), "prompt": f.Text(), "emotional_prompt": f.Text()}))

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    check_manual_dir(manual_dir)
    return {split: self._generate_examples(manual_dir, file) for split, file in SPLITS.items()}

  def _generate_examples(self, manual_dir, split_file):
    c = self.builder_config
    yield from examples(manual_dir, split_file, c.size, c.seed)

