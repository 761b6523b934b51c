"""Declared config fields: every field of every job has a default, a range and a doc, and the shipped presets
lie in the ranges; a value outside is a one-line error naming the field, its value and the range."""
import math

import pytest

from configs import ablation, evaluate, evaluate_generator, generator, lvlm, pretrain_generator, pretrain_preference
from configs import sft_lvlm
from emojax import config_utils as cu

MODULES = (generator, lvlm, sft_lvlm, pretrain_generator, pretrain_preference, evaluate, evaluate_generator, ablation)
PRESETS = [(m, p) for m in MODULES for p in getattr(m, "PRESETS", (None,))]


@pytest.mark.parametrize("module, preset", PRESETS, ids=[f"{m.__name__}:{p}" for m, p in PRESETS])
def test_every_field_is_declared_and_the_presets_lie_in_its_range(module, preset):
  config = module.get_config(preset)
  cu.validate(config, module.FIELDS)
  leaves = cu.flatten(config)
  missing = [p for p, _ in module.FIELDS.items() if not p.endswith(".*") and p not in leaves]
  assert not missing, f"declared fields the config does not have: {missing}"


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_the_defaults_are_the_declared_ones(module):
  leaves = cu.flatten(module.get_config())
  if hasattr(module, "PRESETS"):  # the first preset is the default (docs/configs.md lists the others' changes)
    assert cu.flatten(module.get_config(next(iter(module.PRESETS)))) == leaves
  for path, f in module.FIELDS.items():
    if path.endswith(".*"):
      prefix = path[:-1]
      assert {p[len(prefix):]: v for p, v in leaves.items() if p.startswith(prefix)} == f.default
    else:
      assert leaves[path] == f.default, path


def test_unknown_preset_names_the_known_ones():
  with pytest.raises(ValueError, match=r"^unknown preset 'bogus' for generator; use default, smoke, sd35m or sd35m_1gpu$"):
    generator.get_config("bogus")


def test_a_field_is_declared_once_with_a_default_in_its_range_and_a_one_line_doc():
  f = cu.Fields()
  f("rl.group_size", 8, cu.Int(2), "samples per prompt")
  with pytest.raises(ValueError, match="rl.group_size is declared twice"):
    f("rl.group_size", 4, cu.Int(2), "samples per prompt")
  with pytest.raises(ValueError, match="declared twice"):
    f("rl", 4, cu.Int(2), "a group declared as a field")
  with pytest.raises(ValueError, match="rl.kl_beta's default -1.0 is out of its range: it must be a number >= 0"):
    f("rl.kl_beta", -1.0, cu.Float(0.0), "KL weight")
  with pytest.raises(ValueError, match="one-line doc"):
    f("rl.shift", 3.0, cu.Positive(), "two\nlines")
  f("rewards.weights.*", {"a": 1.0}, cu.Float(0.0), "reward name -> weight")
  f("rules", [("x", None)], cu.ANY, "a mutable default")
  c = f.config()
  assert c.rl.group_size == 8 and c.rewards.weights.to_dict() == {"a": 1.0}
  c.rules.append(("y", None))
  assert f.config().rules == [("x", None)]  # every config() is a fresh copy
  assert f.range_of("rewards.weights.b") == cu.Float(0.0) and f.range_of("rl.other") is None


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
    cu.validate(config, generator.FIELDS)
  text = str(e.value)
  assert "\n" not in text and f"config field {field}={value!r} is out of range: it must be {message}" == text


def test_a_field_without_a_declared_range_is_named():
  config = generator.get_config()
  config.unlock()
  config.rl.new_knob = 3
  with pytest.raises(ValueError, match="config field rl.new_knob has no declared range"):
    cu.validate(config, generator.FIELDS)
