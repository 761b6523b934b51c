"""grain input pipelines: GRPO prompt groups and flow-matching pretraining batches.

All shuffle globally with `seed` and split every global batch across hosts (`shard_index` of `shard_count`):
host i reads only the records of its rows of each global batch, so the stream of global batches does not
depend on the number of hosts (`ProcessRowsSampler`). They run in-process by default (worker processes need
absl flags parsed and a __main__ guard). Strings come out as
numpy object arrays of str. `iter(loader)` is a grain DataLoaderIterator whose
get_state()/set_state() bytes go into the checkpoint.
"""
import dataclasses
import sys

import grain.python as grain
import numpy as np

from emojax.data import emoshapes, sources
from emojax.emotion.space import VA_MAX, VA_MIN, nearest_category
from emojax.emotion.colour import colour_judge_np

TEXT_KEYS = ("prompt", "emotional_prompt")
TARGET_KEYS = ("valence", "arousal", "category")
TARGET_MODES = ("data", "uniform")


@dataclasses.dataclass(frozen=True)
class SelectFields(grain.MapTransform):
  """Keeps text and targets (and the image and shape mask if asked); strings become 0-d object arrays."""
  keep_images: bool = False

  def map(self, example):
    out = {k: np.array(example[k], dtype=object) for k in TEXT_KEYS}
    out |= {k: np.asarray(example[k]) for k in TARGET_KEYS}
    if self.keep_images:
      out["image"] = example["image"]
      if "shape_mask" in example:  # EmoShapes knows its masks; photo datasets do not
        out["shape_mask"] = example["shape_mask"]
    return out


class UniformTargets(grain.RandomMapTransform):
  """Replaces (V, A) by a uniform draw on [-3, 3]^2; grain seeds `rng` per record and step."""

  def random_map(self, example, rng):
    v, a = rng.uniform(VA_MIN, VA_MAX, size=2).astype(np.float32)
    return example | dict(valence=v, arousal=a, category=nearest_category(v, a))


@dataclasses.dataclass(frozen=True)
class PixelNoise(grain.RandomMapTransform):
  """With probability `prob`, adds per-pixel, per-channel Gaussian noise of a std drawn uniformly
  from [0, max_std] (in [0, 1] pixel units) to an EmoShapes record's uint8 image, and relabels it.

  A judge that only ever saw flat colours is read off-distribution by generated images (SDE
  samples are grainy), and a policy finds that: noise, which the colour model scores as vivid,
  was read as calm. The labels are remeasured on the noisy pixels, so they stay the colour
  judge's (V, A) and category of the image as it is; the background words of `emotional_prompt`
  are re-read from the noisy background pixels (the shapes' words still describe their drawn
  colours). Records without a shape mask are left alone."""
  prob: float
  max_std: float

  def __post_init__(self):
    if not 0.0 <= self.prob <= 1.0:
      raise ValueError(f"data.noise_prob={self.prob} must lie in [0, 1]")
    if self.max_std < 0.0:
      raise ValueError(f"data.noise_max_std={self.max_std} must be >= 0")

  def random_map(self, example, rng):
    if rng.uniform() >= self.prob or "shape_mask" not in example:
      return example
    std = rng.uniform(0.0, self.max_std) * 255.0
    return relabel(example, np.clip(np.round(example["image"] + rng.normal(0.0, std, example["image"].shape)), 0,
                                    255).astype(np.uint8))


def relabel(example, image):
  """An EmoShapes record with its image replaced: V, A and category remeasured by the colour judge and the
  background words of `emotional_prompt` re-read from the new background pixels (the shapes' words are kept)."""
  v, a = colour_judge_np(image)
  head = str(example["emotional_prompt"]).rpartition(emoshapes.BACKGROUND_PREFIX)[0]
  words = emoshapes.colour_words(image[example["shape_mask"] == 0])
  return example | dict(image=image, valence=np.float32(v), arousal=np.float32(a), category=nearest_category(v, a),
                        emotional_prompt=np.array(f"{head}{emoshapes.BACKGROUND_PREFIX}{words} background", object))


DARK_SCALES = (0.04, 0.4)  # range of the brightness factor Darken draws from


@dataclasses.dataclass(frozen=True)
class Darken(grain.RandomMapTransform):
  """With probability `prob`, multiplies an EmoShapes record's uint8 image by a factor uniform in
  DARK_SCALES, and relabels it (`relabel`).

  Scaling RGB keeps every pixel's hue and HSV saturation and scales its brightness, so a darkened
  image keeps its saturation, which the colour model weighs most (A = -0.31 B + 0.60 S), while the
  channel differences that carry it shrink to a few grey levels. A judge trained on the world as
  drawn (uniform HSV: an eighth of the images have mean brightness below 0.15) reads arousal there
  almost blind (held-out A MAE 1.05 against 0.25 elsewhere), and a generator rewarded by it turns
  dark targets' saturation the wrong way. Records without a shape mask are left alone."""
  prob: float

  def __post_init__(self):
    if not 0.0 <= self.prob <= 1.0:
      raise ValueError(f"data.dark_prob={self.prob} must lie in [0, 1]")

  def random_map(self, example, rng):
    if rng.uniform() >= self.prob or "shape_mask" not in example:
      return example
    scale = rng.uniform(*DARK_SCALES)
    return relabel(example, np.round(example["image"] * scale).astype(np.uint8))


@dataclasses.dataclass(frozen=True)
class FeedbackTask(grain.RandomMapTransform):
  """Marks a `share` of records for the LVLM's feedback task (task 1; the rest stay judge records, task 0)
  and gives each a feedback target (V, A) uniform on [-3, 3]^2 at one decimal, as the question prints it:
  a user may ask for any emotion, and the held-out grids reach the corners. grain seeds `rng` per record."""
  share: float

  def random_map(self, example, rng):
    task = np.int32(rng.uniform() < self.share)
    v, a = np.round(rng.uniform(VA_MIN, VA_MAX, size=2), 1).astype(np.float32)
    return example | dict(task=task, feedback_valence=v, feedback_arousal=a)


@dataclasses.dataclass(frozen=True)
class RepeatGroups(grain.MapTransform):
  """Repeats each row group_size times contiguously: group i is rows i*G .. (i+1)*G - 1."""
  group_size: int

  def map(self, batch):
    return {k: np.repeat(v, self.group_size, axis=0) for k, v in batch.items()}


class ImagesToUnitRange(grain.MapTransform):
  """uint8 [0, 255] images -> float32 [-1, 1], the generator's pixel range."""

  def map(self, batch):
    return batch | dict(image=batch["image"].astype(np.float32) / 127.5 - 1.0)


def per_process(global_rows: int, process_count: int, what: str) -> int:
  """Rows each process reads of a global batch; an error at start-up if the processes cannot split it evenly."""
  if global_rows % process_count:
    raise ValueError(f"{what} of {global_rows} does not split over {process_count} processes; make it a multiple "
                     f"of the process count")
  return global_rows // process_count


class ProcessRowsSampler:
  """grain sampler of one process's rows of every global batch.

  Position n of the global record order reads record keys[n] (a seeded shuffle of range(num_records), redrawn
  every epoch) with grain's per-record rng seeded by seed + n; global batch b is positions [b*R*P, (b+1)*R*P) and
  process i takes its rows [i*R, (i+1)*R) (R rows per process, P processes). The global stream is therefore the
  same on any number of processes, and with one process this is grain's IndexSampler(shuffle=True, seed).
  Finite epochs end at the last complete global batch."""

  def __init__(self, num_records: int, *, rows: int, shard_index: int, shard_count: int, seed: int,
               num_epochs: int | None = None):
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index {shard_index} is outside [0, {shard_count})")
    self._keys = grain.MapDataset.range(num_records).shuffle(seed=seed)
    self._rows, self._shard, self._count, self._seed = rows, shard_index, shard_count, seed
    global_batches = None if num_epochs is None else num_epochs * num_records // (rows * shard_count)
    self._len = sys.maxsize if global_batches is None else global_batches * rows

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:  # grain checks a restored iterator's sampler by its repr
    return (f"ProcessRowsSampler(num_records={len(self._keys)}, rows={self._rows}, shard_index={self._shard}, "
            f"shard_count={self._count}, seed={self._seed}, len={self._len})")

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if not 0 <= index < self._len:
      raise IndexError(f"sampler index {index} outside [0, {self._len})")
    batch, row = divmod(index, self._rows)
    n = (batch * self._count + self._shard) * self._rows + row
    return grain.RecordMetadata(index=index, record_key=self._keys[n],
                                rng=np.random.Generator(np.random.Philox(key=self._seed + n)))


def _loader(source, operations, *, rows, seed, shard_index, shard_count, num_epochs, worker_count, read_options):
  sampler = ProcessRowsSampler(len(source), rows=rows, shard_index=shard_index, shard_count=shard_count, seed=seed,
                               num_epochs=num_epochs)
  return grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations, shard_options=grain.NoSharding(),
      worker_count=worker_count,
      # Generating a record is ~1 ms of GIL-bound numpy: a few threads and a small
      # prefetch suffice, and don't starve a small host.
      read_options=read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=256))


def grpo_prompt_loader(source, *, prompts_per_step: int, group_size: int, seed: int,
                       shard_index: int, shard_count: int, num_epochs=None, worker_count=0,
                       target_mode="uniform", keep_images=False, augment=(), read_options=None,
                       more_operations=(), resize: int | None = None):
  """Batches of prompts_per_step * group_size rows (this process's share of the global batch; a group never
  spans processes): each prompt and target G times in a row.

  target_mode "uniform" draws (V, A) uniformly on [-3, 3]^2 per record and step (the
  generator must learn to hit any target; the category follows the target), "data" keeps
  the source image's own (V, A). `emotional_prompt` always describes the source image.
  `augment` (image transforms such as Darken and PixelNoise, in order; they need keep_images) change
  images and their labels first;
  `more_operations` (per-record transforms) run last, before batching. `resize` (with keep_images): images of
  another side are resized to it in the loader (a dataset prepared at another size).
  """
  if target_mode not in TARGET_MODES:
    raise ValueError(f"target_mode={target_mode!r}, expected one of {TARGET_MODES}")
  operations = [SelectFields(keep_images)]
  if keep_images and resize:
    operations.append(ResizeImages(resize))
  operations += [t for t in augment if t.prob > 0]
  if target_mode == "uniform":
    operations.append(UniformTargets())
  operations += [*more_operations, grain.Batch(prompts_per_step, drop_remainder=True), RepeatGroups(group_size)]
  return _loader(source, operations, rows=prompts_per_step, seed=seed, shard_index=shard_index,
                 shard_count=shard_count, num_epochs=num_epochs, worker_count=worker_count,
                 read_options=read_options)


def pretrain_loader(source, batch_size: int, seed: int, shard_index: int, shard_count: int, *,
                    worker_count=0, read_options=None):
  """Endless shuffled batches: image float32 [-1, 1] NHWC, shape_mask uint8 NHW, prompts, V, A, category."""
  operations = [SelectFields(keep_images=True), grain.Batch(batch_size, drop_remainder=True),
                ImagesToUnitRange()]
  return _loader(source, operations, rows=batch_size, seed=seed, shard_index=shard_index,
                 shard_count=shard_count, num_epochs=None, worker_count=worker_count,
                 read_options=read_options)


@dataclasses.dataclass(frozen=True)
class ResizeImages(grain.MapTransform):
  """Bicubic resize of a record's uint8 image to size x size (a dataset prepared at another side)."""
  size: int

  def map(self, example):
    return example | {"image": resize_uint8(example["image"], self.size)}


def resize_uint8(image, size: int) -> np.ndarray:
  image = np.asarray(image)
  if image.shape[:2] == (size, size):
    return image
  from PIL import Image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), np.uint8)


def image_loader(d, *, batch_size: int, seed: int, shard_index: int, shard_count: int):
  """Per-host batches of EmoShapes images with their own labels for the LVLM jobs (config.data `d`:
  world seed, size, darkening and noise augmentation, feedback-task share), one row per example: a prompt
  loader with groups of 1."""
  sources.check_augmentations(d)
  source = sources.open_source(d)
  return grpo_prompt_loader(source, prompts_per_step=per_process(batch_size, shard_count, "the image batch"),
                            group_size=1, seed=seed,
                            shard_index=shard_index, shard_count=shard_count, target_mode="data",
                            worker_count=d.get("workers", 0), resize=d.image_size,
                            keep_images=True, augment=(Darken(d.dark_prob), PixelNoise(d.noise_prob, d.noise_max_std)),
                            more_operations=[FeedbackTask(d.feedback_share)] if d.feedback_share > 0 else [])


def held_out_split(d, seed: int, num_examples: int) -> dict[str, np.ndarray]:
  """The LVLM jobs' evaluation images for config.data `d`: EmoShapes world `seed` (procedural), else the first
  num_examples of the dataset's validation split."""
  if d.name == "emoshapes" and not d.dir:
    return labelled_split(seed, num_examples, d.image_size)
  split = sources.as_arrays(sources.open_source(d, "validation"), num_examples)
  return split | {"image": np.stack([resize_uint8(im, d.image_size) for im in split["image"]])}


def labelled_split(seed: int, num_examples: int, size: int = 32, noise_max_std: float = 0.0) -> dict[str, np.ndarray]:
  """Examples 0..n-1 of the EmoShapes world `seed` as arrays: image, valence, arousal, category (a
  judge's held-out split). With noise_max_std > 0 every image gets PixelNoise (a fixed draw per
  example) and its labels remeasured."""
  noise = PixelNoise(1.0, noise_max_std)
  ex = [emoshapes.make_example(seed, i, size) for i in range(num_examples)]
  if noise_max_std > 0:
    ex = [noise.random_map(e, np.random.default_rng((seed, i))) for i, e in enumerate(ex)]
  return {"image": np.stack([e["image"] for e in ex]),
          "valence": np.array([e["valence"] for e in ex], np.float32),
          "arousal": np.array([e["arousal"] for e in ex], np.float32),
          "category": np.array([e["category"] for e in ex], np.int32)}


def pairs_loader(source, batch_size: int, seed: int, shard_index: int, shard_count: int, *, worker_count=0,
                 read_options=None):
  """Endless shuffled batches of preference pairs (caption, preferred, rejected uint8, kind, image_fault)."""
  return _loader(source, [grain.Batch(batch_size, drop_remainder=True)], rows=batch_size, seed=seed, shard_index=shard_index,
                 shard_count=shard_count, num_epochs=None, worker_count=worker_count, read_options=read_options)
