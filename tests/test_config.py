"""Declared config ranges: every field of every job has one and the shipped presets lie in them; a value
outside is a one-line error naming the field, its value and the range."""
import math

import pytest

from configs import evaluate, generator, lvlm, pretrain_generator, sft_lvlm
from emojax import config_utils as cu

PRESETS = [(generator, "default"), (generator, "smoke"), (lvlm, "default"), (lvlm, "smoke"),
           (sft_lvlm, "full"), (sft_lvlm, "smoke"), (sft_lvlm, "feedback"), (pretrain_generator, "full"), (pretrain_generator, "smoke"),
           (pretrain_generator, "va"),
           (evaluate, None)]


@pytest.mark.parametrize("module, preset", PRESETS, ids=[f"{m.__name__}:{p}" for m, p in PRESETS])
def test_every_field_has_a_range_and_the_presets_lie_in_it(module, preset):
  config = module.get_config(preset)
  cu.validate(config, module.RANGES)
  unused = [p for p in module.RANGES if not p.endswith(".*") and p not in cu.flatten(config)]
  assert not unused, f"ranges for fields the config does not have: {unused}"


@pytest.mark.parametrize("field, value, message", [
    ("rl.group_size", 1, "an integer >= 2"),
    ("rl.prompts_per_step", 0, "an integer >= 1"),
    ("rl.kl_beta", -0.01, "a number >= 0"),
    ("rl.clip_eps", 0.0, "a number > 0"),
    ("rl.noise_level", 0.0, "a number in (0, 2]"),
    ("rl.grad_accum", 0, "an integer >= 1"),
    ("rewards.weights.lvlm_emotion", -1.0, "a number >= 0"),
    ("data.target_mode", "random", "one of 'uniform', 'data'"),
    ("export_dtype", "int8", "one of 'float32', 'float16', 'bfloat16'"),
    ("mesh.data", 0, "an integer >= 1 or -1"),
    ("optim.b2", 1.0, "a number in [0, 1)"),
    ("model.frozen", ("text", "vae"), "a tuple of names from 'text', 'emotion', 'mmdit', 'transformer'"),
    ("eval.num_steps", 0, "an integer in [1, 1000]"),
    ("rl.shift", math.nan, "a number > 0"),
])
def test_out_of_range_is_one_line_naming_field_value_and_range(field, value, message):
  config = generator.get_config()
  config.unlock()
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError) as e:
    cu.validate(config, generator.RANGES)
  text = str(e.value)
  assert "\n" not in text and f"config field {field}={value!r} is out of range: it must be {message}" == text


def test_a_field_without_a_declared_range_is_named():
  config = generator.get_config()
  config.unlock()
  config.rl.new_knob = 3
  with pytest.raises(ValueError, match="config field rl.new_knob has no declared range"):
    cu.validate(config, generator.RANGES)
