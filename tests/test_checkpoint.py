"""orbax checkpoints: state + PRNG key + grain iterator round trip, atomicity, config."""
import os

import grain.python as grain
import jax
import numpy as np
import pytest

from emojax import checkpoint


class Ints(grain.RandomAccessDataSource):

  def __len__(self):
    return 40

  def __getitem__(self, i):
    return np.int64(i)

  def __repr__(self):  # grain checks repr(source) on restore
    return "Ints(40)"


def loader():
  sampler = grain.IndexSampler(40, grain.ShardOptions(0, 1), shuffle=True, num_epochs=None, seed=3)
  return grain.DataLoader(data_source=Ints(), sampler=sampler, operations=[grain.Batch(4)], worker_count=0)


def state(seed):
  key = jax.random.key(seed)
  return {"params": {"w": jax.random.normal(key, (3, 2))}, "step": np.int32(seed),
          "rng": jax.random.key_data(jax.random.fold_in(key, 1))}


def test_round_trip(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  it = iter(loader())
  [next(it) for _ in range(3)]
  ckpt.save(7, state(7), it, config={"lr": 1e-3, "name": "x", "obj": object})
  want = [next(it) for _ in range(4)]
  ckpt.close()

  ckpt = checkpoint.Checkpointer(str(tmp_path))
  it = iter(loader())
  assert ckpt.latest_step() == 7
  restored = ckpt.restore(jax.eval_shape(lambda: state(0)), it)
  jax.tree.map(np.testing.assert_array_equal, restored, state(7))
  assert restored["rng"].dtype == np.uint32
  np.testing.assert_array_equal(np.stack([next(it) for _ in range(4)]), np.stack(want))
  assert ckpt.saved_config() == {"lr": 1e-3, "name": "x", "obj": str(object)}
  assert ckpt.saved_config(step=99) is None


def test_interrupted_save_is_ignored(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  it = iter(loader())
  ckpt.save(1, state(1), it)

  def crash(*args, **kwargs):
    raise RuntimeError("preempted")

  monkeypatch.setattr(grain.PyGrainCheckpointHandler, "save", crash)
  with pytest.raises(RuntimeError, match="preempted"):
    ckpt.save(2, state(2), it)  # state is written, then the data item fails: never committed
  # orbax 0.12.8 on a local filesystem writes into "<step>.orbax-checkpoint-tmp" and renames on commit.
  # (A bare "2/" without commit_success.txt would count as complete there: only the rename commits.)
  assert sorted(os.listdir(ckpt.directory)) == ["1", "2.orbax-checkpoint-tmp"]
  assert ckpt.latest_step() == 1
  monkeypatch.undo()
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 1
  restored = ckpt.restore(jax.eval_shape(lambda: state(0)))
  np.testing.assert_array_equal(restored["params"]["w"], state(1)["params"]["w"])
  ckpt.save(2, state(2), it)  # the resumed run saves the same step over the leftover tmp dir
  assert ckpt.latest_step() == 2 and sorted(os.listdir(ckpt.directory)) == ["1", "2"]


def test_restore_without_checkpoint(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() is None and ckpt.saved_config() is None
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    ckpt.restore(jax.eval_shape(lambda: state(0)))
