"""EMOTIC (Kosti et al.): one example per annotated person, continuous valence / arousal / dominance on [-3, 3],
as a TFDS builder writing array_record (no TensorFlow); the generator-free cross-domain test of an LVLM judge.

  from emojax.data import emotic
  emotic.prepare(DATA_DIR, EMOTIC_DIR, config="256")          # "32", "64"; "256_person": the person's box
  tfds.data_source("emotic/256", data_dir=DATA_DIR)           # {"train", "validation", "test"}

EMOTIC_DIR is the official release: `Annotations/Annotations.mat` (read with scipy) holding the struct arrays
`train`, `val` and `test`, and the images under `emotic/<folder>/<filename>` (folder e.g. "mscoco/images").
Each image struct has filename, folder, image_size, original_database and person; each person body_bbox
(x1, y1, x2, y2 pixels), annotations_categories.categories, annotations_continuous.{valence, arousal,
dominance} (1..10), gender and age. In val and test the person's annotations are per annotator, and
combined_categories (the union) and combined_continuous (the mean) stand beside them: those combined ones are
what this builder uses there (in train, the single annotator's).

Continuous values map linearly from [1, 10] to [-3, 3]: x' = (x - 5.5) / 4.5 * 3. A person whose mapped values
fall outside [-3, 3] or are not finite, or whose image cannot be decoded, is skipped and counted, and the
count is reported at the end of the split as a warning.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from emojax.data import sources
from emojax.io.images import load_square

CATEGORIES = ("Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence", "Disapproval",
              "Disconnection", "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem",
              "Excitement", "Fatigue", "Fear", "Happiness", "Pain", "Peace", "Pleasure", "Sadness", "Sensitivity",
              "Suffering", "Surprise", "Sympathy", "Yearning")  # EMOTIC's 26 discrete categories
SPLITS = {"train": "train", "validation": "val", "test": "test"}
ANNOTATIONS = os.path.join("Annotations", "Annotations.mat")
CONFIGS = ((32, False), (64, False), (256, False), (256, True))  # (image side, person crop); 32: the tiny judge


def to_va_range(x):
  """EMOTIC's 1..10 ratings -> [-3, 3] (5.5 -> 0)."""
  return (np.asarray(x, np.float64) - 5.5) / 4.5 * 3.0


def check_manual_dir(manual_dir) -> None:
  if not os.path.isfile(os.path.join(manual_dir, ANNOTATIONS)):
    raise FileNotFoundError(f"EMOTIC manual_dir {manual_dir} lacks {ANNOTATIONS}: unpack the official EMOTIC release "
                            "there (Annotations/Annotations.mat and emotic/<source>/images/...)")


def _list(x):
  """A MATLAB field read with squeeze_me: one element comes back bare, several as an array."""
  if x is None:
    return []
  if isinstance(x, np.ndarray):
    return list(x.ravel())
  return [x]


def _text(x) -> str:
  return "" if isinstance(x, np.ndarray) and x.size == 0 else str(x)


def _categories(person, combined: bool) -> list[str]:
  if combined:
    return [str(c) for c in _list(person.combined_categories)]
  return [str(c) for c in _list(person.annotations_categories.categories)]


def _continuous(person, combined: bool) -> np.ndarray:
  c = person.combined_continuous if combined else person.annotations_continuous
  return to_va_range([float(np.asarray(getattr(c, k)).ravel()[0]) for k in ("valence", "arousal", "dominance")])


def read_split(manual_dir, split: str):
  """The struct array of one split (`train`, `val` or `test`) of Annotations.mat."""
  from scipy.io import loadmat
  mat = loadmat(os.path.join(manual_dir, ANNOTATIONS), squeeze_me=True, struct_as_record=False)
  if split not in mat:
    raise ValueError(f"{ANNOTATIONS} in {manual_dir} has no '{split}' struct array (has {sorted(k for k in mat if not k.startswith('__'))})")
  return _list(mat[split])


def examples(manual_dir, split: str, size: int, crop: bool):
  """(key, example) per annotated person of a split; skipped people are counted and reported at the end."""
  combined = split != "train"
  skipped = {"undecodable image": 0, "values outside [-3, 3]": 0, "unknown category": 0}
  for i, record in enumerate(read_split(manual_dir, split)):
    path = os.path.join(manual_dir, "emotic", _text(record.folder), _text(record.filename))
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{ANNOTATIONS} {split}[{i}] names {path}, which does not exist")
    whole = None
    for j, person in enumerate(_list(record.person)):
      box = np.asarray(person.body_bbox, np.float64).ravel()
      vad = _continuous(person, combined)
      cats = _categories(person, combined)
      if not np.all(np.isfinite(vad)) or np.any(np.abs(vad) > 3.0):
        skipped["values outside [-3, 3]"] += 1
        continue
      if any(c not in CATEGORIES for c in cats):
        skipped["unknown category"] += 1
        continue
      try:
        image = load_square(path, size, box if crop else None) if crop or whole is None else whole
      except (OSError, ValueError):
        skipped["undecodable image"] += 1
        continue
      whole = whole if crop else image
      yield f"{i}_{j}", {
          "image": image, "image_id": _text(record.filename), "source": _text(record.original_database.name),
          "bbox": box.astype(np.float32), "valence": np.float32(vad[0]), "arousal": np.float32(vad[1]),
          "dominance": np.float32(vad[2]), "categories": cats, "gender": _text(getattr(person, "gender", "")),
          "age": _text(getattr(person, "age", ""))}
  if any(skipped.values()):
    logging.warning("emotic %s: skipped %s", split, ", ".join(f"{n} ({why})" for why, n in skipped.items() if n))


def prepare(data_dir, manual_dir, config: str = "256"):
  """Builds emotic/<config> into data_dir from manual_dir (checked first: one line naming what is missing)."""
  return sources.build("emotic", data_dir, config, manual_dir, check_manual_dir)


class EmoticConfig(tfds.core.BuilderConfig):
  def __init__(self, *, size: int, crop: bool, **kw):
    super().__init__(name=f"{size}" + ("_person" if crop else ""),
                     description=f"{size}x{size} {'person crops' if crop else 'whole images'}", **kw)
    self.size, self.crop = size, crop


class Emotic(tfds.core.GeneratorBasedBuilder):
  """EMOTIC, one example per annotated person (emojax.data.emotic)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [EmoticConfig(size=s, crop=c) for s, c in CONFIGS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Unpack the EMOTIC release into manual_dir: Annotations/Annotations.mat, emotic/."

  def _info(self):
    f = tfds.features
    s = self.builder_config.size
    return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
        "image": f.Tensor(shape=(s, s, 3), dtype=np.uint8), "image_id": f.Text(), "source": f.Text(),
        "bbox": f.Tensor(shape=(4,), dtype=np.float32), "valence": f.Scalar(np.float32),
        "arousal": f.Scalar(np.float32), "dominance": f.Scalar(np.float32),
        "categories": f.Sequence(f.ClassLabel(names=CATEGORIES)), "gender": f.Text(), "age": f.Text()}))

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    check_manual_dir(manual_dir)
    return {name: self._generate_examples(manual_dir, split) for name, split in SPLITS.items()}

  def _generate_examples(self, manual_dir, split):
    c = self.builder_config
    yield from examples(manual_dir, split, c.size, c.crop)

