"""The emotic TFDS builder on a small release written here in EMOTIC's layout: Annotations/Annotations.mat (struct
arrays saved with scipy) and emotic/<source>/images/. One example per person, 1..10 -> [-3, 3], the combined
annotations in val/test, person crops, and the bad-input paths."""
import logging
import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

import tensorflow_datasets as tfds

from emojax.data import emotic


def struct(**fields):
  """A 1x1 MATLAB struct."""
  return structs([fields])


def structs(rows):
  """A 1xN MATLAB struct array of dicts with the same keys."""
  out = np.empty((len(rows),), dtype=[(k, "O") for k in rows[0]])
  for i, row in enumerate(rows):
    for k, v in row.items():
      out[i][k] = v
  return out


def cell(*strings):
  out = np.empty((len(strings),), dtype=object)
  out[:] = strings
  return out


def vad(v, a, d):
  return struct(valence=float(v), arousal=float(a), dominance=float(d))


def person(box, cats, cont, *, combined=None):
  p = {"body_bbox": np.array(box, np.float64), "annotations_categories": struct(categories=cell(*cats)),
       "annotations_continuous": cont, "gender": "Female", "age": "Adult"}
  if combined is not None:  # val / test: per-annotator arrays beside the combined union / mean
    p["annotations_categories"] = structs([{"categories": cell(*cats)}, {"categories": cell("Fatigue")}])
    p["annotations_continuous"] = structs([{"valence": 2.0, "arousal": 2.0, "dominance": 2.0}] * 2)
    p["combined_categories"], p["combined_continuous"] = combined
  return p


def image(root, name, corrupt=False):
  """A 40x60 picture: left half red, right half blue."""
  path = os.path.join(root, "emotic", "mscoco", "images", name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.zeros((40, 60, 3), np.uint8)
  pixels[:, :30, 0], pixels[:, 30:, 2] = 255, 255
  Image.fromarray(pixels).save(path)
  if corrupt:
    open(path, "wb").write(b"not a jpeg")
  return {"filename": name, "folder": "mscoco/images", "image_size": struct(n_col=60.0, n_row=40.0),
          "original_database": struct(name="mscoco", info=struct(image_id=1.0))}


def make_emotic(root):
  os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
  train = [
      {**image(root, "a.jpg"), "person": structs([person([0, 0, 30, 40], ["Happiness", "Pleasure"], vad(10, 1, 5.5)),
                                                  person([30, 0, 60, 40], ["Fear"], vad(1, 10, 7))])},
      {**image(root, "b.jpg"), "person": structs([person([5, 5, 25, 35], ["Peace"], vad(7, 4, 4))])},
  ]
  val = [{**image(root, "c.jpg"), "person": structs([person(
      [0, 0, 30, 40], ["Anger"], None, combined=(cell("Anger", "Annoyance"), vad(8.5, 8.5, 8.5)))])}]
  test = [
      {**image(root, "d.jpg"), "person": structs([
          person([0, 0, 30, 40], ["Sadness"], None, combined=(cell("Sadness"), vad(12, 5, 5))),  # out of range
          person([30, 0, 60, 40], ["Surprise"], None, combined=(cell("Surprise"), vad(5.5, 10, 1)))])},
      {**image(root, "e.jpg", corrupt=True), "person": structs([
          person([0, 0, 30, 40], ["Pain"], None, combined=(cell("Pain"), vad(2, 8, 3)))])},
  ]
  savemat(os.path.join(root, emotic.ANNOTATIONS), {"train": structs(train), "val": structs(val),
                                                    "test": structs(test)})
  return root


def test_one_example_per_person_with_mapped_values_and_combined_annotations(tmp_path, caplog):
  root = make_emotic(str(tmp_path / "EMOTIC"))
  with caplog.at_level(logging.WARNING):
    emotic.prepare(tmp_path / "data", root, "64")
  assert "emotic test: skipped 1 (undecodable image), 1 (values outside [-3, 3])" in caplog.text
  src = tfds.data_source("emotic/64", data_dir=str(tmp_path / "data"))
  assert {k: len(v) for k, v in src.items()} == {"train": 3, "validation": 1, "test": 1}
  names = emotic.CATEGORIES
  train = {tuple(names[c] for c in ex["categories"]): ex for ex in (src["train"][i] for i in range(3))}
  happy, fear = train[("Happiness", "Pleasure")], train[("Fear",)]
  assert (happy["valence"], happy["arousal"], happy["dominance"]) == (3.0, -3.0, 0.0)
  assert fear["valence"] == -3.0 and fear["arousal"] == 3.0 and fear["dominance"] == pytest.approx(1.0)
  assert happy["image"].shape == (64, 64, 3) and np.array_equal(happy["image"], fear["image"])  # the whole image
  np.testing.assert_array_equal(fear["bbox"], [30, 0, 60, 40])
  assert happy["source"] == b"mscoco" and happy["gender"] == b"Female"
  val = src["validation"][0]  # the combined union and mean, not the annotators' own (2.0 each)
  assert [names[c] for c in val["categories"]] == ["Anger", "Annoyance"] and val["valence"] == pytest.approx(2.0)
  assert src["test"][0]["arousal"] == 3.0 and src["test"][0]["valence"] == 0.0


def test_person_crops(tmp_path):
  root = make_emotic(str(tmp_path / "EMOTIC"))
  emotic.prepare(tmp_path / "data", root, "256_person")
  src = tfds.data_source("emotic/256_person", data_dir=str(tmp_path / "data"))
  for ex in (src["train"][i] for i in range(3)):
    red, blue = ex["image"][..., 0].mean(), ex["image"][..., 2].mean()
    assert (red > 250 and blue < 5) if ex["bbox"][0] < 30 else (blue > 250 and red < 5)


def test_bad_releases_fail_with_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="lacks Annotations/Annotations.mat: unpack the official EMOTIC"):
    emotic.prepare(tmp_path / "data", tmp_path / "nothing")
  root = make_emotic(str(tmp_path / "EMOTIC"))
  os.remove(os.path.join(root, "emotic", "mscoco", "images", "b.jpg"))
  with pytest.raises(FileNotFoundError, match=r"train\[1\] names .*b.jpg, which does not exist"):
    emotic.prepare(tmp_path / "data2", root, "64")
