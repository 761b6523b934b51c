"""Pretraining job: runs through the shared trainer and exports a directory GRPO can load."""
import jax
import numpy as np
import pytest

from configs import pretrain_generator
from emojax import trainer
from emojax.data import emoshapes
from emojax.evaluation import text_use
from emojax.evaluation.training_eval import EvalSet
from emojax.evaluation import layout as layout_judge
from emojax.pipelines import tiny
from emojax.pipelines.policy import TinyPolicy
from emojax.tasks.pretrain_generator import PretrainGenerator, pixel_weights


@pytest.mark.asset
def test_shipped_asset_matches_its_config():
  gen, gcfg, params = tiny.load_generator("")
  assert gcfg.mmdit.sample_size == 32 and gcfg.mmdit.in_channels == 3


@pytest.mark.asset
def test_shipped_generator_follows_the_requested_emotion_from_a_neutral_prompt():
  """The supervised V-A stage made the emotion input carry colour: neutral prompts x a 3x3 V-A grid (ODE 8,
  no CFG, as the main job's eval grid), read by the colour judge."""
  gen, gcfg, params = tiny.load_generator("")
  m = EvalSet(TinyPolicy(gen, gcfg), num_prompts=4, seed=12345, num_steps=8, shift=3.0, cfg_scale=1.0, source="grid")(params)
  # measured on worlds 12345-12348: V/A corr 0.81-0.92 / 0.79-0.92, |dV| 0.76-0.94, |dA| 0.57-0.96; before the
  # V-A stage (emotion tokens at their zero init) corr about 0 and |dV| 2.06, |dA| 1.77
  assert m["eval/v_corr"] > 0.7 and m["eval/a_corr"] > 0.7
  assert m["eval/v_abs_err"] < 1.1 and m["eval/a_abs_err"] < 1.1


@pytest.mark.asset
def test_shipped_generator_reads_place_and_shape_words():
  gen, gcfg, params = tiny.load_generator("")
  examples = [emoshapes.make_example(12345, i) for i in range(32)]
  shapes = text_use.text_use_losses(gen, gcfg, params, examples, sigmas=(0.7,))[0.7]["shapes"]
  # measured (loss on shape pixels, x the right prompt's) on worlds 12345-12348: places moved 3.4-4.4x, no
  # prompt 1.64-1.90x, shape names swapped 1.54-1.58x; the previous asset drew the same block whatever the
  # name (swapped 1.05x). Thresholds sit below the measured range.
  assert shapes["places_moved"] > 2 * shapes["correct"] and shapes["empty"] > 1.4 * shapes["correct"]
  assert shapes["shapes_swapped"] > 1.3 * shapes["correct"]


@pytest.mark.asset
def test_shipped_generator_draws_the_named_shapes_in_the_named_cells():
  gen, gcfg, params = tiny.load_generator("")
  evals = EvalSet(TinyPolicy(gen, gcfg), num_prompts=16, seed=12345, num_steps=8, shift=3.0, cfg_scale=3.0,
                                   source="emotional")
  occupied, kinds = layout_judge.read_layout(np.asarray(evals.sample(params)))
  want = layout_judge.named_kinds(evals.prompts)
  named = want >= 0
  # measured on worlds 12345-12348: shapes in 100% of the named cells, 0-1.8% of the others, 37-50% of the
  # named kind (chance 20%); previous assets: 69% / 8% / 16% (blocks in the right cells), 56% / 39% (specks
  # everywhere). Thresholds sit below the measured range.
  assert occupied[named].mean() > 0.85 and occupied[~named].mean() < 0.05
  assert (kinds[named] == want[named]).mean() > 0.3


def test_pretrain_smoke_exports_a_loadable_generator(tmp_path):
  config = pretrain_generator.get_config("smoke")
  config.unlock()
  config.mesh.num_devices = 1
  config.total_steps, config.eval_every = 2, 2
  # the layout options (shape_margin is what makes outlines pay; see pixel_weights)
  config.uniform_sigma_frac, config.shape_weight, config.shape_margin, config.caption.p_drop_pooled = 0.25, 5.0, 2, 0.5
  result = trainer.run(config, str(tmp_path), PretrainGenerator(config), progress=False)
  assert result.step == 2 and np.isfinite(result.metrics[-1]["loss"])
  assert result.metrics[-1]["loss"] != result.metrics[-1]["fm_loss"]  # the shape-weighted loss is the one trained
  assert {"eval/v_abs_err", "eval/layout_shape_acc"} <= result.metrics[-1].keys() and (tmp_path / "samples" / "step_000002.png").exists()
  gen, gcfg, params = tiny.load_generator(str(tmp_path / "export"))
  ema = jax.device_get(result.state["ema"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3), params, ema)  # float16 export
  # frozen emotion path: still exactly zero after pretraining
  assert not np.any(params["emotion"]["to_tokens"]["kernel"])
  config.export_weights = "params"  # the raw weights, sharper than the EMA right after an lr decay
  state = {**result.state, "ema": jax.tree.map(lambda x: x + 1.0, result.state["ema"])}  # tell them apart
  PretrainGenerator(config).export(state, str(tmp_path / "raw" / "export"))
  raw = tiny.load_generator(str(tmp_path / "raw" / "export"))[2]
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
  jax.tree.map(close, raw, jax.device_get(state["params"]))


def test_pixel_weights_favour_shapes_and_average_one_per_image():
  mask = np.zeros((2, 4, 4), np.float32)
  mask[0, :2, :2] = 1  # a quarter of image 0 is shape; image 1 has none
  w = np.asarray(pixel_weights(mask, 9.0))
  np.testing.assert_allclose(w.mean(axis=(1, 2)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(w[0, 0, 0] / w[0, 3, 3], 10.0, rtol=1e-6)
  np.testing.assert_allclose(w[1], 1.0)
  np.testing.assert_allclose(pixel_weights(mask, 0.0), 1.0)


def test_pixel_weights_margin_weights_the_background_around_each_shape_alike():
  mask = np.zeros((1, 9, 9), np.float32)
  mask[0, 4, 4] = 1
  w = np.asarray(pixel_weights(mask, 9.0, margin=2))[0]
  np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(w[2:7, 2:7], w[4, 4])  # the 5x5 square within 2 px of the shape: one weight
  np.testing.assert_allclose(w[4, 4] / w[1, 4], 10.0, rtol=1e-6)  # 3 px away: background weight
  np.testing.assert_allclose(w[0, 0], w[8, 8])


def test_shape_weight_without_masks_is_a_clear_error():
  config = pretrain_generator.get_config("smoke")
  config.unlock()
  config.shape_weight = 10.0
  raw = {"image": np.zeros((2, 32, 32, 3), np.float32), "prompt": ["a circle in the center"] * 2,
         "emotional_prompt": ["a dark grey circle in the center"] * 2, "valence": np.zeros(2), "arousal": np.zeros(2)}
  with pytest.raises(ValueError, match="shape_weight=10.0 needs per-pixel shape masks"):
    PretrainGenerator(config).host_batch(raw)
  config.shape_weight = 0.0
  assert not PretrainGenerator(config).host_batch(raw)["shape_mask"].any()


def test_learning_rate_warms_up_holds_then_decays_to_zero_at_total_steps():
  from emojax import config_utils, optim
  c = config_utils.optimizer(lr=2.0, warmup_steps=10, decay_steps=40)
  lr = optim.learning_rate_schedule(c, total_steps=100)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 59, 60, 80, 100)], [0, 1, 2, 2, 2, 1, 0], atol=1e-6)
  with pytest.raises(ValueError, match="decay_fraction needs the run's total_steps"):
    optim.make_optimizer(c)
  with pytest.raises(ValueError, match="overlaps the warmup"):
    optim.learning_rate_schedule(c, total_steps=45)
  assert float(optim.learning_rate_schedule(config_utils.optimizer(lr=0.5))(7)) == 0.5
  half = optim.learning_rate_schedule(config_utils.optimizer(lr=2.0, decay_fraction=0.5), total_steps=120)
  np.testing.assert_allclose([float(half(s)) for s in (0, 60, 90, 120)], [2, 2, 1, 0], atol=1e-6)
  with pytest.raises(ValueError, match="set one of them"):
    optim.learning_rate_schedule(config_utils.optimizer(lr=2.0, decay_steps=5, decay_fraction=0.5), total_steps=120)


def test_supervised_va_stage_trains_only_the_emotion_embedding(tiny_asset, tmp_path):
  """A later stage from a generator directory with the text encoder and the MMDiT frozen: only the V-A
  embedding moves, and the export is loadable with the same config as its start."""
  config = pretrain_generator.get_config("smoke")
  config.unlock()
  config.mesh.num_devices, config.total_steps, config.eval_every = 1, 2, 2
  config.model.init_from, config.model.frozen = tiny_asset, ("text", "mmdit")
  config.caption.p_neutral, config.export_weights, config.export_dtype = 0.9, "params", "float32"
  config.eval.source = "grid"  # neutral prompts x V-A targets: what this stage is for
  result = trainer.run(config, str(tmp_path), PretrainGenerator(config), progress=False)
  start, end = tiny.load_generator(tiny_asset), tiny.load_generator(str(tmp_path / "export"))
  assert end[1] == start[1]
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), end[2], start[2])
  assert max(jax.tree.leaves(moved["emotion"])) > 0
  assert max(jax.tree.leaves(moved["mmdit"])) == 0 and max(jax.tree.leaves(moved["text"])) == 0
  assert np.isfinite(result.metrics[-1]["loss"])


def test_va_stage_without_a_generator_to_continue_is_a_clear_error():
  config = pretrain_generator.get_config("va")
  with pytest.raises(ValueError, match="freezes a random init; set --config.model.init_from"):
    PretrainGenerator(config)
