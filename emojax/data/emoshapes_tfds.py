"""EmoShapes with fixed train / validation / test splits as a TFDS builder (array_record), for runs and reports
that should read the same records as everyone else rather than the endless procedural world.

  from emojax.data import emoshapes_tfds
  emoshapes_tfds.prepare(DATA_DIR, config="32")     # no manual directory: the world is procedural
  tfds.data_source("emoshapes/32", data_dir=DATA_DIR)

Splits are disjoint worlds (emoshapes.make_example(seed, index, size)): train world 1000, validation 1001, test
1002; config "32" / "64" hold 50,000 / 2,000 / 2,000 examples of that side, "tiny" 64 / 16 / 16 at 32 px (tests).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from emojax.data import emoshapes, sources
from emojax.emotion.space import CATEGORIES

SPLIT_WORLDS = {"train": 1000, "validation": 1001, "test": 1002}
CONFIGS = {"32": (32, (50_000, 2_000, 2_000)), "64": (64, (50_000, 2_000, 2_000)), "tiny": (32, (64, 16, 16))}


def prepare(data_dir, config: str = "32"):
  """Builds emoshapes/<config> into data_dir (procedural: no manual directory)."""
  return sources.build("emoshapes", data_dir, config)


class EmoShapesConfig(tfds.core.BuilderConfig):
  def __init__(self, *, name: str, **kw):
    size, counts = CONFIGS[name]
    super().__init__(name=name, description=f"{size}x{size}, splits of {counts} examples", **kw)
    self.size, self.counts = size, dict(zip(SPLIT_WORLDS, counts))


class Emoshapes(tfds.core.GeneratorBasedBuilder):
  """The EmoShapes world's fixed splits (emojax.data.emoshapes_tfds)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [EmoShapesConfig(name=n) for n in CONFIGS]

  def _info(self):
    f = tfds.features
    s = self.builder_config.size
    return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
        "image": f.Tensor(shape=(s, s, 3), dtype=np.uint8), "shape_mask": f.Tensor(shape=(s, s), dtype=np.uint8),
        "valence": f.Scalar(np.float32), "arousal": f.Scalar(np.float32),
        "category": f.ClassLabel(names=CATEGORIES), "prompt": f.Text(), "emotional_prompt": f.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in SPLIT_WORLDS}

  def _generate_examples(self, split):
    c = self.builder_config
    for i in range(c.counts[split]):
      ex = emoshapes.make_example(SPLIT_WORLDS[split], i, c.size)
      yield i, {"image": ex["image"], "shape_mask": ex["shape_mask"], "valence": np.float32(ex["valence"]),
                "arousal": np.float32(ex["arousal"]), "category": int(ex["category"]), "prompt": ex["prompt"],
                "emotional_prompt": ex["emotional_prompt"]}

