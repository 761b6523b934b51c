"""Pretraining job: runs through the shared trainer and exports a directory GRPO can load."""
import jax
import numpy as np
import pytest

from configs import pretrain_generator
from emojax import trainer
from emojax.models import assets
from emojax.tasks import generator_common
from emojax.tasks.pretrain_generator import PretrainGenerator


def test_shipped_asset_matches_its_config():
  gen, gcfg, params = generator_common.load_generator("")
  assert gcfg.mmdit.sample_size == 32 and gcfg.mmdit.in_channels == 3
  # emotion tokens ship at their zero init: GRPO starts from exactly the pretrained function
  for leaf in jax.tree.leaves(params["emotion"]["to_tokens"]) + jax.tree.leaves(params["emotion"]["to_pooled"]):
    assert not np.any(leaf)


def test_pretrain_smoke_exports_a_loadable_generator(tmp_path):
  config = pretrain_generator.get_config("smoke")
  config.unlock()
  config.mesh.num_devices = 1
  config.total_steps, config.eval_every = 2, 2
  config.uniform_sigma_frac = 0.5  # the mixed sigma density of the shipped asset's last 600 steps
  result = trainer.run(config, str(tmp_path), PretrainGenerator(config), progress=False)
  assert result.step == 2 and np.isfinite(result.metrics[-1]["loss"])
  assert "eval/v_abs_err" in result.metrics[-1] and (tmp_path / "samples" / "step_000002.png").exists()
  gen, gcfg, params = generator_common.load_generator(str(tmp_path / "export"))
  ema = jax.device_get(result.state["ema"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3), params, ema)  # float16 export
  # frozen emotion path: still exactly zero after pretraining
  assert not np.any(params["emotion"]["to_tokens"]["kernel"])


def test_learning_rate_warms_up_holds_then_decays_to_zero_at_total_steps():
  from emojax import config_utils
  c = config_utils.optimizer(lr=2.0, warmup_steps=10, decay_steps=40)
  lr = config_utils.learning_rate_schedule(c, total_steps=100)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 59, 60, 80, 100)], [0, 1, 2, 2, 2, 1, 0], atol=1e-6)
  with pytest.raises(ValueError, match="decay_steps needs the run's total_steps"):
    config_utils.make_optimizer(c)
  with pytest.raises(ValueError, match="overlaps the warmup"):
    config_utils.learning_rate_schedule(c, total_steps=45)
  assert float(config_utils.learning_rate_schedule(config_utils.optimizer(lr=0.5))(7)) == 0.5
