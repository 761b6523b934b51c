"""The LVLM judge as the generator's reward: registry plumbing, the reward's behaviour on images whose
emotion is known, and one generator GRPO step driven by it through the trainer's host stage."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax import config_utils
from emojax.data import pipeline
from emojax.io import images
from emojax.rewards import emotion_distance, lvlm_emotion, registry
from emojax.emotion.colour import colour_judge


def test_lvlm_emotion_is_a_host_reward():
  assert registry.is_host("lvlm_emotion") and not registry.is_host("colour_emotion")
  assert "lvlm_emotion" in registry.names()
  with pytest.raises(ValueError, match="runs on the host"):
    registry.get("lvlm_emotion")
  with pytest.raises(ValueError, match="unknown reward 'nope'"):
    registry.is_host("nope")


def test_combine_reads_host_rewards_from_the_batch():
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
  batch = {"valence": jnp.zeros(4), "arousal": jnp.ones(4), "reward/lvlm_emotion": jnp.arange(4.0),
           "lvlm_emotion/parsed": jnp.ones(4)}
  colour, _ = registry.get("colour_emotion")(images, batch)
  total, logs = registry.combine(images, batch, {"colour_emotion": 0.5, "lvlm_emotion": 2.0})
  np.testing.assert_allclose(total, 0.5 * colour + 2.0 * jnp.arange(4.0), rtol=1e-6)
  np.testing.assert_array_equal(logs["reward/lvlm_emotion"], jnp.arange(4.0))
  np.testing.assert_array_equal(logs["lvlm_emotion/parsed"], jnp.ones(4))
  del batch["reward/lvlm_emotion"]
  with pytest.raises(ValueError, match="host reward 'lvlm_emotion' is missing"):
    registry.combine(images, batch, {"lvlm_emotion": 1.0})


def test_to_uint8_rounds_like_the_sample_pngs():
  x = np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(images.to_uint8(x), [0, 0, 128, 255, 255, 255])


@pytest.fixture(scope="module")
def judge():
  return lvlm_emotion.LVLMJudgeReward.from_config(config_utils.lvlm_judge(batch_size=16))


@pytest.mark.asset
def test_shipped_judge_rewards_the_requested_emotion(judge):
  """EmoShapes images of a world the judge never saw, as the generator would emit them ([-1, 1]):
  asked for their own V-A they earn more than asked for the opposite corner's, and the reward is
  1 - (|dV| + |dA|) / 12 of the judge's reading, which tracks the colour judge. Measured on worlds
  4242-4246 for this judge and another GRPO seed: reward gap 0.48-0.55, |dV| <= 0.39, |dA| <= 0.54."""
  split = pipeline.labelled_split(4242, 16)
  images = split["image"].astype(np.float32) / 127.5 - 1.0
  own = {"valence": split["valence"], "arousal": split["arousal"]}
  far = {"valence": -np.sign(split["valence"]) * 2.5, "arousal": -np.sign(split["arousal"]) * 2.5}
  r_own, ext = judge(images, own)
  texts = list(judge.last_texts)
  r_far, _ = judge(images, far)
  assert ext["parsed"].mean() == 1.0
  assert r_own.mean() > r_far.mean() + 0.15, (r_own.mean(), r_far.mean())
  assert ext["v_abs_err"].mean() < 0.7 and ext["a_abs_err"].mean() < 0.8, ext
  np.testing.assert_allclose(r_own, 1.0 - (ext["v_abs_err"] + ext["a_abs_err"]) / 12.0, atol=1e-6)
  assert texts == judge.last_texts  # greedy: the same images give the same answers
  v, a = map(np.asarray, colour_judge(jnp.asarray(images)))
  np.testing.assert_allclose(v, split["valence"], atol=1e-3)  # uint8 -> [-1, 1] loses nothing the judge reads
  np.testing.assert_allclose(a, split["arousal"], atol=1e-3)


@pytest.mark.asset
def test_generator_step_with_the_lvlm_reward(tmp_path):
  """One GRPO step of the default rewards (LVLM judge 1 and the shipped preference model at the default's weight,
  emotion rewards rescored by the default's V-A distance) plus the colour judge at 0.5: the rewards the update
  logs are those separately loaded judges give the very images the rollout made, row for row, so the host
  stage's scores reach the update aligned with their samples and prompts."""
  from configs import generator as generator_config
  from emojax import trainer
  from emojax.tasks.generator_grpo import GeneratorGRPO
  c = generator_config.get_config("smoke")
  c.total_steps, c.eval.at_start, c.eval_every, c.mesh.num_devices = 1, False, 1000, 1
  c.rewards.weights.colour_emotion = 0.5
  task = GeneratorGRPO(c)
  assert set(task.host_rewards) == {"lvlm_emotion", "pickscore"}
  seen = {}
  score = task.score

  def spy(rows, raw):
    seen["images"], seen["raw"] = np.asarray(rows["images"]), raw
    return score(rows, raw)

  task.score = spy
  m = trainer.run(c, str(tmp_path), task, progress=False).metrics[0]
  target = {"valence": seen["raw"]["valence"], "arousal": seen["raw"]["arousal"]}
  judge = lvlm_emotion.LVLMJudgeReward.from_config(c.rewards.lvlm)  # the shipped judge, loaded separately
  lvlm, ext = judge(seen["images"], target)
  _, colour_ext = registry.get("colour_emotion")(jnp.asarray(seen["images"]), {k: jnp.asarray(v) for k, v in target.items()})
  distance = c.rewards.emotion_distance
  lvlm = np.asarray(emotion_distance.emotion_distance_reward(ext, distance))
  colour = np.asarray(emotion_distance.emotion_distance_reward(colour_ext, distance))
  from emojax.io import assets
  from emojax.io.images import to_uint8
  from emojax.rewards.clip_scores import SHIPPED_PREFERENCE, ClipScorer
  scorer = ClipScorer.from_pretrained(assets.asset_dir(SHIPPED_PREFERENCE))
  pick = scorer.pickscore(to_uint8(seen["images"]), list(seen["raw"]["prompt"])) / c.rewards.pickscore.scale
  total = lvlm + c.rewards.weights.pickscore * pick + 0.5 * colour
  assert m["reward/lvlm_emotion"] == pytest.approx(float(lvlm.mean()), abs=1e-6)
  assert m["reward/pickscore"] == pytest.approx(float(pick.mean()), abs=1e-5)
  assert m["reward_mean"] == pytest.approx(float(total.mean()), abs=1e-5)
  assert m["reward_std"] == pytest.approx(float(np.std(total)), abs=1e-5)
  assert m["lvlm_emotion/v_abs_err"] == pytest.approx(float(ext["v_abs_err"].mean()), abs=1e-6)
  assert m["reward_std"] > 0 and m["ratio_dev_first"] < 1e-5


def test_bf16_judge_reads_as_the_fp32_one():
  """rewards.lvlm.dtype=bfloat16 (a 7B judge's setting): the frozen judge is stored and computes in bf16 (half the
  bytes of a device); on 16 held-out images the tiny judge's greedy readings stay those of fp32 (seen: identical)."""
  split = pipeline.labelled_split(777, 16)
  reads = {}
  for dtype in ("float32", "bfloat16"):
    c = config_utils.lvlm_judge(batch_size=16)
    c.dtype = dtype
    reward = lvlm_emotion.LVLMJudgeReward.from_config(c)
    assert reward.model.dtype == jnp.dtype(dtype)
    assert {x.dtype for x in jax.tree.leaves(reward.params)} == {jnp.dtype(dtype)}
    _, extras = reward(split["image"], {"valence": split["valence"], "arousal": split["arousal"]})
    assert extras["parsed"].all()
    reads[dtype] = extras["v_abs_err"], extras["a_abs_err"]
  for f32, b16 in zip(reads["float32"], reads["bfloat16"]):
    assert np.abs(f32 - b16).mean() <= 0.1


@pytest.mark.asset
def test_judge_sharded_over_the_training_mesh_answers_as_the_replicated_one(judge):
  """rewards.lvlm.mesh=train: the judge's weights sharded over a data 2 x fsdp 2 x tensor 2 mesh by the Qwen2.5-VL
  rules and each batch a global array: the same greedy answers as the replicated judge on 16 held-out images (20
  rows: the last batch is padded); a batch the mesh cannot divide, or no mesh, is refused."""
  from emojax import parallel
  split = pipeline.labelled_split(778, 20)
  images = split["image"].astype(np.float32) / 127.5 - 1.0
  target = {"valence": split["valence"], "arousal": split["arousal"]}
  mesh = parallel.make_mesh(2, 2, 2)
  c = config_utils.lvlm_judge(batch_size=16)
  c.mesh = "train"
  sharded = lvlm_emotion.LVLMJudgeReward.from_config(c, mesh)
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(sharded.params)}
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
  r_sharded, _ = sharded(images, target)
  r_replicated, _ = judge(images, target)
  assert sharded.last_texts == judge.last_texts
  np.testing.assert_array_equal(r_sharded, r_replicated)
  with pytest.raises(ValueError, match="rewards.lvlm.batch_size .* of 12 is not divisible by mesh data\\*fsdp = 8"):
    c.batch_size = 12
    lvlm_emotion.LVLMJudgeReward.from_config(c, parallel.make_mesh(1, 8, 1))
  with pytest.raises(ValueError, match="shards the judge over a training job's mesh; here there is none"):
    lvlm_emotion.LVLMJudgeReward.from_config(c)
