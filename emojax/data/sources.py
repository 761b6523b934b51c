"""Training and evaluation data by name: the procedural EmoShapes world or a prepared TFDS dataset, as grain
random-access sources whose records look alike (image uint8, valence, arousal, category, prompt,
emotional_prompt; text as str).

  config.data.name = "emoshapes"   # data.dir "": the procedural world (data.seed, data.num_examples), nothing to
                                   # prepare; data.dir D: the fixed splits of tfds "emoshapes/<data.image_size>" in D
  config.data.name = "emoset_va"   # tfds.data_source("emoset_va/<data.image_size>", data_dir=data.dir)
"""
from __future__ import annotations

import os

import numpy as np

from emojax.data import emoshapes

TRAINABLE = ("emoshapes", "emoset_va")  # datasets with what the jobs train on: prompts, V-A and a Mikels category
BUILDERS = {"emoset_va": "emojax.data.emoset", "emotic": "emojax.data.emotic", "emoshapes": "emojax.data.emoshapes_tfds"}


class TfdsSource:
  """A split of a prepared TFDS dataset (array_record) with text fields decoded to str."""

  def __init__(self, name: str, data_dir: str, split: str, config: str | None = None):
    import importlib
    import tensorflow_datasets as tfds
    importlib.import_module(BUILDERS[name])  # registers the builder
    full = f"{name}/{config}" if config else name
    if not data_dir or not os.path.isdir(os.path.join(data_dir, name, config or "")):
      manual = "" if name == "emoshapes" else "MANUAL_DIR, "
      raise FileNotFoundError(f"dataset {full} is not prepared in data_dir {data_dir!r}: build it first, e.g. "
                              f"`{BUILDERS[name]}.prepare(DATA_DIR, {manual}{config!r})`, and set data.dir=DATA_DIR")
    self.name, self._source = full, tfds.data_source(full, data_dir=data_dir)[split]

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = self._source[index]
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in record.items()}

  def __repr__(self):
    return f"TfdsSource({self.name})"


def build(name: str, data_dir, config: str, manual_dir=None, check_manual_dir=None):
  """Builds the TFDS dataset name/config into data_dir (array_record), from manual_dir when the dataset has one
  (checked first by check_manual_dir: one line naming what is missing); returns the builder."""
  import tensorflow_datasets as tfds
  download = None
  if manual_dir is not None:
    if check_manual_dir is not None:
      check_manual_dir(manual_dir)
    download = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  builder = tfds.builder(f"{name}/{config}", data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=download)
  return builder


def open_source(d, split: str = "train", size: int | None = None):
  """The records of config.data `d` (name, dir, config, seed, num_examples, image_size); size overrides the
  image side; the TFDS config is d.config, or the image side ("64")."""
  size = size or d.image_size
  if d.name == "emoshapes" and not d.dir:
    return emoshapes.EmoShapesSource(d.seed, d.num_examples, size=size)
  if d.name not in TRAINABLE:
    raise ValueError(f"data.name={d.name!r}: the jobs train on one of {TRAINABLE}")
  return TfdsSource(d.name, d.dir, split, config=d.config or str(size))


def relabels_by_colour(d) -> bool:
  """Whether d's augmentations (darkening, pixel noise) are on: they relabel by EmoShapes' colour model."""
  return d.get("dark_prob", 0.0) > 0 or d.get("noise_prob", 0.0) > 0


def check_augmentations(d) -> None:
  if d.name != "emoshapes" and relabels_by_colour(d):
    raise ValueError(f"data.dark_prob / data.noise_prob relabel images by the EmoShapes colour model, which does not "
                     f"hold for {d.name}; set both to 0")


def as_arrays(source, n: int) -> dict[str, np.ndarray]:
  """The first n records as arrays: image, valence, arousal and, where records hold one Mikels category index,
  category (a labelled split for judging; EMOTIC's records hold its own category lists instead)."""
  rows = [source[i] for i in range(min(n, len(source)))]
  out = {"image": np.stack([r["image"] for r in rows]),
         "valence": np.array([r["valence"] for r in rows], np.float32),
         "arousal": np.array([r["arousal"] for r in rows], np.float32)}
  if all(np.ndim(r.get("category", [])) == 0 for r in rows):
    out["category"] = np.array([r["category"] for r in rows], np.int32)
  return out
