"""The GRPO job through the shared trainer: resume equality, sharding equality, error paths."""
import dataclasses
import os
import signal

import jax
import numpy as np
import pytest

from emojax import trainer
from emojax.io import assets
from emojax.models import generator as gen_lib
from emojax.models import mmdit, text_encoder
from emojax.tasks.generator_grpo import GeneratorGRPO
from configs import generator as generator_config


@pytest.fixture(scope="module")
def tiny_asset(tmp_path_factory):
  """A random miniature generator saved in the shipped-asset layout."""
  mm = dataclasses.replace(mmdit.PRESETS["tiny"], num_layers=2, num_attention_heads=2, attention_head_dim=16,
                           joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32)
  tx = dataclasses.replace(text_encoder.PRESETS["tiny"], hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, projection_dim=32, max_position_embeddings=24)
  gcfg = gen_lib.GeneratorConfig(mmdit=mm, text=tx, num_emotion_tokens=2, emotion_hidden=32, max_text_length=96)
  gen = gen_lib.Generator(gcfg)
  params = jax.jit(lambda k: gen_lib.init_params(gen, k))(jax.random.key(3))
  # make the emotion path live so GRPO updates are not all zero-gradient noise
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.02 * jax.random.normal(jax.random.key(hash(str(p)) % 2**31), x.shape)
      if "emotion" in str(p) else x, params)
  path = str(tmp_path_factory.mktemp("asset") / "generator")
  assets.save(path, jax.device_get(params), gcfg.to_dict())
  return path


def make_config(asset, **over):
  c = generator_config.get_config("smoke")
  c.unlock()
  c.model.pretrained = asset
  c.model.frozen = ("text",)  # the MMDiT trains too, so sharded gradients of every kind are compared
  c.rewards.weights = {"colour_emotion": 1.0}  # in-graph reward: exact comparisons (the LVLM judge: test_lvlm_judge)
  c.eval.at_start = False
  c.eval_every = 1000
  c.total_steps = 4
  c.checkpoint_every = 2
  c.rl.grad_accum = 2
  for k, v in over.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def run(config, workdir, task=None):
  return trainer.run(config, str(workdir), task or GeneratorGRPO(config), progress=False)


def _params(result):
  return jax.tree.map(np.asarray, jax.device_get(result.state["params"]))


def test_sigterm_resume_equals_uninterrupted(tiny_asset, tmp_path):
  config = make_config(tiny_asset, **{"mesh.num_devices": 1})
  full = run(config, tmp_path / "full")

  task = GeneratorGRPO(config)
  hook = task.on_step_end

  def preempt_at_2(step, state, metrics, workdir):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return hook(step, state, metrics, workdir)

  task.on_step_end = preempt_at_2
  first = run(config, tmp_path / "split", task)
  assert first.preempted and first.step == 2
  second = run(config, tmp_path / "split")
  assert second.step == 4 and not second.preempted
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), _params(full), _params(second))
  # the resumed run's steps 3-4 saw the same data and RNG as the uninterrupted run's
  np.testing.assert_allclose([m["reward_mean"] for m in full.metrics[2:]],
                             [m["reward_mean"] for m in second.metrics], rtol=0, atol=0)
  assert first.metrics[0]["ratio_dev_first"] < 1e-5


@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=8), dict(data=4, fsdp=2)], ids=["fsdp8", "data4_fsdp2"])
def test_sharded_step_equals_single_device(tiny_asset, tmp_path, mesh, single_device_step):
  over = {"total_steps": 1, "mesh.num_devices": 8, "mesh.data": mesh["data"], "mesh.fsdp": mesh["fsdp"], **_ONE_STEP}
  sharded = run(make_config(tiny_asset, **over), tmp_path / "sharded")
  ref_metrics, ref_params = single_device_step
  got = sharded.metrics[0]
  # Reductions run in another order on 8 shards: equal to float32 rounding, not bitwise.
  # The on-policy loss is -mean(A) = 0 up to rounding, compared absolutely: its rounding is that of
  # the advantages, i.e. reward rounding divided by a group's reward std (measured 1e-6 to 1e-5).
  np.testing.assert_allclose(got["loss"], ref_metrics["loss"], rtol=0, atol=5e-5, err_msg="loss")
  for k in ("grad_norm", "reward_mean", "kl", "judge/v_abs_err"):
    np.testing.assert_allclose(got[k], ref_metrics[k], rtol=1e-4, atol=1e-5, err_msg=k)
  # Adam's first step is lr*g/(|g|+eps): with eps=1e-8 a rounding-level change in a tiny g can
  # flip its sign, so both runs use eps=1e-2 (update smooth in g) and lr=1e-2 (updates ~1e-2).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-6), _params(sharded), ref_params)


_ONE_STEP = {"rl.prompts_per_step": 2, "rl.group_size": 4, "optim.eps": 1e-2, "optim.learning_rate": 1e-2}


@pytest.fixture(scope="module")
def single_device_step(tiny_asset, tmp_path_factory):
  over = {"total_steps": 1, "mesh.num_devices": 1, **_ONE_STEP}
  res = run(make_config(tiny_asset, **over), tmp_path_factory.mktemp("single"))
  return res.metrics[0], _params(res)


def test_batch_the_mesh_cannot_divide_is_a_startup_error(tiny_asset, tmp_path):
  config = make_config(tiny_asset, **{"mesh.num_devices": 8, "rl.prompts_per_step": 3, "rl.group_size": 2})
  with pytest.raises(ValueError, match="not divisible by mesh data\\*fsdp = 8"):
    run(config, tmp_path)
  assert not os.path.exists(tmp_path / "checkpoints" / "0")


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tiny_asset, tmp_path):
  config = make_config(tiny_asset, **{"mesh.num_devices": 1})
  task = GeneratorGRPO(config)
  step_fn = task.train_step

  def poisoned(state, batch, rng, constants):
    state, metrics = step_fn(state, batch, rng, constants)
    metrics["loss"] = jax.numpy.where(state["step"] >= 3, jax.numpy.nan, metrics["loss"])
    return state, metrics

  task.train_step = poisoned
  with pytest.raises(trainer.NonFiniteLossError, match="at step 3.*last good checkpoint: step 2"):
    run(config, tmp_path, task)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_missing_pretrained_directory_is_one_actionable_line(tmp_path):
  config = make_config(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="does not exist; make it with `python -m emojax.train"):
    GeneratorGRPO(config)


def test_zero_weight_rewards_are_skipped_and_all_zero_is_an_error(tiny_asset):
  task = GeneratorGRPO(make_config(tiny_asset, **{"rewards.weights": {"lvlm_emotion": 0.0, "colour_emotion": 1.0}}))
  assert task.host_rewards == {} and task.reward_weights == {"colour_emotion": 1.0}  # the LVLM is not loaded
  with pytest.raises(ValueError, match="every reward weight is 0"):
    GeneratorGRPO(make_config(tiny_asset, **{"rewards.weights": {"lvlm_emotion": 0.0}}))


def test_out_of_range_targets_are_rejected(tiny_asset):
  task = GeneratorGRPO(make_config(tiny_asset))
  raw = {"prompt": np.array(["a circle"], object), "valence": np.array([3.5], np.float32),
         "arousal": np.array([0.0], np.float32)}
  with pytest.raises(ValueError, match="valence=3.5 is outside"):
    task.host_batch(raw)


def test_guided_step_is_on_policy(tiny_asset, tmp_path):
  """With classifier-free guidance in rollouts and re-scoring (each sample at its own timesteps)."""
  res = run(make_config(tiny_asset, **{"total_steps": 1, "mesh.num_devices": 1, "rl.cfg_scale": 3.0, **_ONE_STEP}),
            tmp_path)
  m = res.metrics[0]
  assert np.isfinite(m["loss"]) and m["ratio_dev_first"] < 1e-5 and m["reward_std"] > 0
