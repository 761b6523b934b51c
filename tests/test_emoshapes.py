import re

import numpy as np
import pytest

from emojax.data import emoshapes
from emojax.data.emoshapes import EmoShapesSource, colour_words, make_example
from emojax.emotion.space import nearest_category
from emojax.emotion.colour import brightness_saturation_np, colour_judge

ADJECTIVES = set(emoshapes.BRIGHTNESS_WORDS + emoshapes.SATURATION_WORDS + ("grey", "warm", "cool"))


@pytest.fixture(scope="module")
def examples():
  return [make_example(0, i) for i in range(300)]


def assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_deterministic_per_seed_and_index():
  source = EmoShapesSource(seed=3, num_examples=50)
  assert len(source) == 50
  assert_same(source[np.int64(41)], make_example(3, 41))  # independent of what was made before
  assert_same(make_example(3, 41), make_example(3, 41))
  assert not np.array_equal(make_example(3, 41)["image"], make_example(4, 41)["image"])
  assert not np.array_equal(make_example(3, 41)["image"], make_example(3, 42)["image"])
  with pytest.raises(IndexError):
    source[50]


def test_fields(examples):
  ex = examples[0]
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
  assert isinstance(ex["prompt"], str) and isinstance(ex["emotional_prompt"], str)
  assert ex["valence"].dtype == ex["arousal"].dtype == np.float32 and ex["category"].dtype == np.int32
  assert make_example(0, 0, size=48)["image"].shape == (48, 48, 3)


def test_shape_mask_marks_exactly_the_pixels_that_differ_from_the_background(examples):
  for ex in examples[:50]:
    mask = ex["shape_mask"]
    assert mask.dtype == np.uint8 and mask.shape == (32, 32) and 0 < mask.mean() < 0.5
    background = ex["image"][0, 0]  # the border is always background
    np.testing.assert_array_equal(np.any(ex["image"] != background, axis=-1), mask.astype(bool))


def test_labels_are_the_colour_judge_of_the_image(examples):
  images = np.stack([ex["image"] for ex in examples])
  v, a = (np.array([ex[k] for ex in examples]) for k in ("valence", "arousal"))
  np.testing.assert_allclose(colour_judge(images), (v, a), atol=1e-5)
  np.testing.assert_array_equal([ex["category"] for ex in examples], nearest_category(v, a))


def test_targets_cover_the_emotion_space(examples):
  v, a = (np.array([ex[k] for ex in examples]) for k in ("valence", "arousal"))
  assert np.all(np.abs(v) <= 3) and np.all(np.abs(a) <= 3)
  assert v.min() < -2.2 and v.max() > 2.2 and a.min() < -2.2 and a.max() > 2.2
  assert v.std() > 1.0 and a.std() > 1.0
  assert len(set(int(ex["category"]) for ex in examples)) >= 7


def test_emotional_prompt_is_the_prompt_plus_colour_words(examples):
  for ex in examples:
    emotional, background = ex["emotional_prompt"].rsplit(", on a ", 1)
    assert background.endswith(" background")
    assert " ".join(w for w in emotional.split(" ") if w not in ADJECTIVES) == ex["prompt"]
    assert re.fullmatch(r"a (circle|square|triangle|star|ring) .*", ex["prompt"])


def test_colour_words():
  words = lambda rgb: colour_words(np.array([rgb], np.uint8))
  assert words((255, 255, 255)) == "bright grey"
  assert words((128, 128, 128)) == "dim grey"
  assert words((255, 0, 0)) == "bright vivid warm"
  assert words((0, 0, 60)) == "dark vivid cool"
  assert words((200, 180, 150)) == "bright muted warm"


def test_colour_words_match_pixel_statistics(examples):
  for ex in examples:
    image = ex["image"]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert np.all(border == image[0, 0])  # shapes stay inside their cells
    background_words = ex["emotional_prompt"].rsplit(", on a ", 1)[1].removesuffix(" background")
    assert background_words == colour_words(image[0, 0])
    b, s = (x.mean() for x in brightness_saturation_np(image))
    background_b, background_s = (float(x) for x in brightness_saturation_np(image[0, 0]))
    assert ("bright" in background_words) == (background_b >= 2 / 3)
    assert ("dark" in background_words) == (background_b < 1 / 3)
    assert ("vivid" in background_words) == (background_s >= 2 / 3)
    if b > 0.8:
      assert "bright" in ex["emotional_prompt"]
    if s < 0.05:
      assert "grey" in ex["emotional_prompt"]
