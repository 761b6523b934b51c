import numpy as np
import pytest

from emojax.data.emoshapes import EmoShapesSource
from emojax.data import pipeline
from emojax.data.pipeline import grpo_prompt_loader, pretrain_loader
from emojax.emotion.space import nearest_category

SOURCE = EmoShapesSource(seed=0, num_examples=40)


class IndexedSource:
  """Records whose prompt names their index."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return dict(prompt=f"p{i}", emotional_prompt=f"e{i}", valence=np.float32(i / self.n),
                arousal=np.float32(0), category=np.int32(0), image=np.zeros((2, 2, 3), np.uint8))


def grpo(source=SOURCE, **kw):
  kw = dict(prompts_per_step=4, group_size=3, seed=7, shard_index=0, shard_count=1) | kw
  return grpo_prompt_loader(source, **kw)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_batches_hold_contiguous_groups():
  batch = next(iter(grpo()))
  assert set(batch) == {"prompt", "emotional_prompt", "valence", "arousal", "category"}
  for k, v in batch.items():
    assert v.shape == (12,), k
    groups = v.reshape(4, 3)
    assert np.all(groups == groups[:, :1]), k
  assert len(set(batch["valence"].tolist())) == 4
  assert batch["prompt"].dtype == object and isinstance(batch["prompt"][0], str)
  assert batch["valence"].dtype == np.float32 and batch["category"].dtype == np.int32
  image = next(iter(grpo(keep_images=True)))["image"]
  assert image.shape == (12, 32, 32, 3) and image.dtype == np.uint8


def test_target_modes():
  data = {SOURCE[i]["emotional_prompt"]: (SOURCE[i]["valence"], SOURCE[i]["arousal"]) for i in range(40)}
  for batch in take(iter(grpo(target_mode="data")), 3):
    for p, v, a in zip(batch["emotional_prompt"], batch["valence"], batch["arousal"]):
      assert (v, a) == data[p]
  batches = take(iter(grpo()), 20)  # uniform by default
  v, a, c = (np.concatenate([b[k] for b in batches]) for k in ("valence", "arousal", "category"))
  assert np.all(np.abs(v) <= 3) and np.all(np.abs(a) <= 3)
  assert v.min() < -2 and v.max() > 2 and a.min() < -2 and a.max() > 2
  np.testing.assert_array_equal(c, nearest_category(v, a))
  again = take(iter(grpo()), 20)
  np.testing.assert_array_equal(np.concatenate([b["valence"] for b in again]), v)
  with pytest.raises(ValueError, match="target_mode"):
    grpo(target_mode="nope")


def test_shards_are_disjoint():
  source = IndexedSource(11)
  seen = []
  for shard in range(2):
    loader = grpo(source, prompts_per_step=1, group_size=1, shard_index=shard, shard_count=2,
                  num_epochs=1, target_mode="data")
    seen.append({p for b in loader for p in b["prompt"]})
  assert len(seen[0]) == len(seen[1]) == 5 and not seen[0] & seen[1]


class CountingSource(IndexedSource):
  def __init__(self, n):
    super().__init__(n)
    self.read = set()

  def __getitem__(self, i):
    self.read.add(i)
    return super().__getitem__(i)


def test_processes_split_each_global_batch_and_read_only_their_rows():
  """Process i's rows of step s are rows [i*R, (i+1)*R) of the one-process global batch of step s, uniform target
  draws included, across an epoch boundary; each process reads only its records; an uneven split is refused."""
  whole = take(iter(grpo(IndexedSource(13), prompts_per_step=4)), 9)
  parts = [take(iter(grpo(IndexedSource(13), prompts_per_step=2, shard_index=i, shard_count=2)), 9) for i in range(2)]
  for step, want in enumerate(whole):
    for k in ("prompt", "valence", "arousal", "category"):
      np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), want[k])
  sources = [CountingSource(13) for _ in range(2)]
  for i, source in enumerate(sources):  # one epoch: 3 global batches of 4 of the 13 records
    list(grpo(source, prompts_per_step=2, shard_index=i, shard_count=2, num_epochs=1))
  assert len(sources[0].read) == len(sources[1].read) == 6 and not sources[0].read & sources[1].read
  with pytest.raises(ValueError, match="rl.prompts_per_step of 5 does not split over 2 processes"):
    pipeline.per_process(5, 2, "rl.prompts_per_step")


def test_iterator_state_restores_the_stream():
  loader = grpo()
  iterator = iter(loader)
  take(iterator, 4)
  state = iterator.get_state()
  assert isinstance(state, bytes)
  expected = take(iterator, 13)  # crosses the epoch boundary (40 records, 4 per step)
  restored = iter(loader)
  restored.set_state(state)
  for want, got in zip(expected, take(restored, 13)):
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_pretrain_batches_are_endless_unit_range_images():
  iterator = iter(pretrain_loader(SOURCE, batch_size=16, seed=0, shard_index=0, shard_count=1))
  batches = take(iterator, 6)  # 2.4 epochs
  image = batches[0]["image"]
  assert image.shape == (16, 32, 32, 3) and image.dtype == np.float32
  assert -1 <= image.min() < image.max() <= 1
  assert {"prompt", "emotional_prompt", "valence", "arousal"} <= set(batches[0])
  expected = SOURCE[0]["image"].astype(np.float32) / 127.5 - 1
  assert any(np.allclose(expected, im) for b in batches for im in b["image"])


def test_pixel_noise_relabels_images_with_the_colour_judge():
  from emojax.data import emoshapes
  from emojax.emotion.colour import colour_judge_np
  from emojax import config_utils
  d = config_utils.lvlm_data(seed=0)
  d.num_examples = 40
  loader = lambda: iter(pipeline.image_loader(d, batch_size=8, seed=7, shard_index=0, shard_count=1))
  batches = take(loader(), 5)
  clean = {(SOURCE[i]["prompt"], SOURCE[i]["shape_mask"].tobytes()): SOURCE[i]["image"] for i in range(40)}
  noisy = 0
  for b in batches:
    v, a = colour_judge_np(b["image"])
    np.testing.assert_array_equal(b["valence"], v)
    np.testing.assert_array_equal(b["arousal"], a)
    np.testing.assert_array_equal(b["category"], nearest_category(v, a))
    for image, mask, prompt, emotional in zip(b["image"], b["shape_mask"], b["prompt"], b["emotional_prompt"]):
      changed = not np.array_equal(image, clean[prompt, mask.tobytes()])
      noisy += changed
      if changed:  # the background words are read off the noisy background
        assert emotional.endswith(f", on a {emoshapes.colour_words(image[mask == 0])} background"), emotional
  assert 10 <= noisy <= 30  # about half of 40
  d.noise_prob = 1.5
  with pytest.raises(ValueError, match="noise_prob"):
    loader()


def test_noisy_eval_split_is_fixed_and_relabelled():
  from emojax.emotion.colour import colour_judge_np
  clean, noisy = pipeline.labelled_split(9, 6), pipeline.labelled_split(9, 6, noise_max_std=0.4)
  np.testing.assert_array_equal(noisy["image"], pipeline.labelled_split(9, 6, noise_max_std=0.4)["image"])
  assert all(not np.array_equal(a, b) for a, b in zip(clean["image"], noisy["image"]))
  v, a = colour_judge_np(noisy["image"])
  np.testing.assert_array_equal(noisy["valence"], v)
  np.testing.assert_array_equal(noisy["arousal"], a)
  np.testing.assert_array_equal(noisy["category"], nearest_category(v, a))
  with pytest.raises(ValueError, match="noise_max_std=-0.1 must be >= 0"):
    pipeline.labelled_split(9, 6, noise_max_std=-0.1)


def test_darken_scales_brightness_keeps_saturation_and_relabels():
  from emojax.data import emoshapes
  from emojax.emotion.colour import brightness_saturation_np, colour_judge_np
  example = pipeline.SelectFields(keep_images=True).map(SOURCE[3])
  rng = np.random.default_rng(0)
  dark = pipeline.Darken(1.0).random_map(example, rng)
  b0, s0 = brightness_saturation_np(example["image"])
  b1, s1 = brightness_saturation_np(dark["image"])
  scale = b1.mean() / b0.mean()
  assert pipeline.DARK_SCALES[0] - 0.01 <= scale <= pipeline.DARK_SCALES[1] + 0.01
  bright = b0 > 0.5  # uint8 rounding moves the saturation of near-black pixels, not of these
  np.testing.assert_allclose(s1[bright], s0[bright], atol=0.1)
  v, a = colour_judge_np(dark["image"])
  assert (dark["valence"], dark["arousal"], dark["category"]) == (v, a, nearest_category(v, a))
  assert str(dark["emotional_prompt"]).endswith(
      f", on a {emoshapes.colour_words(dark['image'][example['shape_mask'] == 0])} background")
  assert pipeline.Darken(0.0).random_map(example, rng) is example
  with pytest.raises(ValueError, match="dark_prob=2"):
    pipeline.Darken(2)
