"""The trainer's three-stage step (jitted experience -> host scoring -> jitted update), the shape
LVLM-judged rewards take: host scores reach the update row-aligned, on 1 and on 8 devices."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from emojax import config_utils, trainer
from emojax.data import emoshapes, pipeline


class HostScoredTask:
  """Experience: w . (V, A) per row. Score (host, via text): 1 if its printed form is negative.
  Update: w -= lr * mean(score * (V, A)) — only right if scores line up with their rows."""
  progress_keys = ()
  global_batch_size = 8

  def __init__(self):
    self.seen = []

  def make_loader(self, shard_index, shard_count):
    source = emoshapes.EmoShapesSource(seed=5, num_examples=64)
    return pipeline.grpo_prompt_loader(source, prompts_per_step=pipeline.per_process(4, shard_count, "prompts"), group_size=2, seed=0,
                                       shard_index=shard_index, shard_count=shard_count)

  def host_batch(self, raw):
    return {"va": np.stack([raw["valence"], raw["arousal"]], -1).astype(np.float32)}

  def init_state(self, rng):
    return {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.array([1.0, -0.5])}}

  def constants(self):
    return {}

  def experience(self, state, batch, rng, constants):
    return {"dot": batch["va"] @ state["params"]["w"]}

  def score(self, rows, raw):
    texts = [f"{d:+.3f}" for d in rows["dot"]]  # host-only work, as parsing an answer would be
    self.seen.append(texts)
    return {"score": np.array([t.startswith("-") for t in texts], np.float32)}

  def train_step(self, state, batch, rng, constants):
    g = jnp.mean(batch["score"][:, None] * batch["va"], axis=0)
    w = state["params"]["w"] - 0.1 * g
    return {"step": state["step"] + 1, "params": {"w": w}}, {"loss": jnp.sum(g ** 2)}

  def on_step_end(self, step, state, metrics, workdir):
    return {}


def _config(**mesh):
  c = ml_collections.ConfigDict()
  c.seed, c.total_steps, c.checkpoint_every, c.keep_checkpoints = 0, 3, 100, 1
  c.mesh = config_utils.mesh(**mesh)
  c.sharding = config_utils.sharding()
  return c


def _replay(task):
  """The same three steps in numpy, from the rows the loader gives."""
  w = np.array([1.0, -0.5])
  it = iter(task.make_loader(0, 1))
  for _ in range(3):
    va = task.host_batch(next(it))["va"].astype(np.float64)
    score = (va @ w < 0).astype(np.float64)
    w = w - 0.1 * np.mean(score[:, None] * va, axis=0)
  return w


@pytest.mark.parametrize("mesh", [{"num_devices": 1}, {"data": 4, "fsdp": 2}])
def test_host_scores_reach_their_rows(tmp_path, mesh):
  if "fsdp" in mesh and jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  task = HostScoredTask()
  result = trainer.run(_config(**mesh), str(tmp_path), task, progress=False)
  assert len(task.seen) == 3 and all(len(t) == 8 for t in task.seen)
  np.testing.assert_allclose(np.asarray(result.state["params"]["w"]), _replay(HostScoredTask()), atol=1e-5)
