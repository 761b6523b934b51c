"""The emoset_va TFDS builder on a small directory in EmoSet-118K's own layout, built here: array_record splits read
back with tfds.data_source, deterministic V-A, prompts from the attributes, and the bad-input paths."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

import tensorflow_datasets as tfds

from emojax.data import emoset
from emojax.emotion.space import CATEGORIES, CATEGORY_CENTROIDS
from emojax.io import images


def make_emoset(root, per_split=(6, 2, 2), corrupt=1):
  """info.json, {train,val,test}.json of [emotion, image path, annotation path], JPEGs of several shapes and
  annotations with and without the optional attributes; the last `corrupt` train images are truncated JPEGs."""
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  n = 0
  for split, count in zip(("train", "val", "test"), per_split):
    entries = []
    for i in range(count):
      emotion = CATEGORIES[n % len(CATEGORIES)]
      name = f"{emotion}_{n:05d}"
      image, ann = f"image/{emotion}/{name}.jpg", f"annotation/{emotion}/{name}.json"
      for d in (os.path.dirname(image), os.path.dirname(ann)):
        os.makedirs(os.path.join(root, d), exist_ok=True)
      h, w = (40, 60) if n % 2 else (50, 30)
      Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(root, image), quality=90)
      if split == "train" and i >= count - corrupt:
        data = open(os.path.join(root, image), "rb").read()
        open(os.path.join(root, image), "wb").write(data[:40])
      record = {"image_id": name, "emotion": emotion, "brightness": (n % 3) / 3 + 0.1, "colorfulness": 0.9}
      if n % 2 == 0:
        record |= {"scene": "beach", "object": ["dog", "ball"], "facial_expression": "smiling",
                   "human_action": "running"}
      json.dump(record, open(os.path.join(root, ann), "w"))
      entries.append([emotion, image, ann])
      n += 1
    json.dump(entries, open(os.path.join(root, f"{split}.json"), "w"))
  json.dump({"emotion": list(CATEGORIES)}, open(os.path.join(root, "info.json"), "w"))
  return root


def prepare(manual_dir, data_dir, config="64"):
  return emoset.prepare(data_dir, manual_dir, config)


def test_builds_array_record_splits_read_by_data_source(tmp_path, caplog):
  manual = make_emoset(tmp_path / "EmoSet-118K")
  with caplog.at_level(logging.WARNING):
    prepare(manual, tmp_path / "data")
  assert "skipped 1 undecodable image(s): image/" in caplog.text  # reported, not a crash, not silent
  src = tfds.data_source("emoset_va/64", data_dir=str(tmp_path / "data"))
  assert {k: len(v) for k, v in src.items()} == {"train": 5, "validation": 2, "test": 2}
  rows = [src["train"][i] for i in range(5)] + [src["test"][i] for i in range(2)]
  for ex in rows:
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    category = CATEGORIES[int(ex["category"])]
    image_id = ex["image_id"].decode()
    assert image_id.startswith(category)
    v, a = emoset.sample_va(image_id, category, seed=0)
    assert ex["valence"] == pytest.approx(v) and ex["arousal"] == pytest.approx(a)
    assert -3 <= v <= 3 and -3 <= a <= 3
    prompt, emotional = ex["prompt"].decode(), ex["emotional_prompt"].decode()
    assert emotional.startswith(prompt + ", " + emoset.EMOTIONAL_WORDS[category])
    if ex["scene"]:
      assert prompt == "a photo of dog, ball in a beach" and emotional.endswith(", smiling, running")
    else:
      assert prompt == "a photo of a scene" and emotional.endswith("vivid")


def test_va_is_per_image_deterministic_and_spread_around_the_centroid():
  a = [emoset.sample_va(f"fear_{i:05d}", "fear", seed=0) for i in range(2000)]
  assert emoset.sample_va("fear_00007", "fear", 0) == a[7]
  assert emoset.sample_va("fear_00007", "fear", 1) != a[7]
  a = np.array(a)
  np.testing.assert_allclose(a.mean(0), CATEGORY_CENTROIDS[CATEGORIES.index("fear")], atol=0.06)
  assert 0.5 < a[:, 0].std() < 0.65


def test_square_crop_keeps_the_centre(tmp_path):
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 10:30] = 255  # the centre square is white, the side strips black
  path = tmp_path / "wide.png"
  Image.fromarray(image).save(path)
  out = images.load_square(path, 8)
  assert out.shape == (8, 8, 3) and out.min() >= 250
  left = images.load_square(path, 4, box=(-5, 0, 10, 20))  # clipped to the image: the black strip
  assert left.max() <= 5


def test_bad_manual_dirs_fail_with_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"lacks info.json, train.json, val.json, test.json: unpack EmoSet"):
    prepare(tmp_path / "empty", tmp_path / "data")
  manual = make_emoset(tmp_path / "EmoSet", per_split=(2, 1, 1), corrupt=0)
  entries = json.load(open(manual / "val.json"))
  entries.append(["fear", "image/fear/fear_99999.jpg", "annotation/fear/fear_99999.json"])
  json.dump(entries, open(manual / "val.json", "w"))
  with pytest.raises(FileNotFoundError, match="val.json entry 1 names image/fear/fear_99999.jpg, which is not in"):
    prepare(manual, tmp_path / "data2")


def test_va_seed_is_a_builder_config(tmp_path):
  manual = make_emoset(tmp_path / "EmoSet", per_split=(3, 1, 1), corrupt=0)
  prepare(manual, tmp_path / "data", "32_seed1")
  src = tfds.data_source("emoset_va/32_seed1", data_dir=str(tmp_path / "data"))["train"]
  for ex in (src[i] for i in range(3)):
    category = CATEGORIES[int(ex["category"])]
    assert ex["valence"] == pytest.approx(emoset.sample_va(ex["image_id"].decode(), category, seed=1)[0])
