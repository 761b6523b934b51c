"""Test session setup: 8 simulated CPU devices and a persistent compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, so it happens here at import time.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE = os.environ.get("EMOJAX_TEST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "emojax_jax_tests"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import copy  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDENS = pathlib.Path(ROOT) / "tests" / "goldens"


class Golden(NamedTuple):
  """One tests/goldens/<name>.npz, as the tools/make_goldens_*.py scripts write it."""
  config: Any  # the reference model's config.json (decoded), or None when the golden stores none
  weights: dict  # the reference state dict (the "weights/<key>" entries)
  arrays: dict  # everything else: inputs and the reference's outputs


@functools.cache
def _cached_golden(name: str) -> Golden:
  with np.load(GOLDENS / f"{name}.npz") as z:
    config = json.loads(str(z["config"])) if "config" in z.files else None
    weights = {k.removeprefix("weights/"): z[k] for k in z.files if k.startswith("weights/")}
    arrays = {k: z[k] for k in z.files if k != "config" and not k.startswith("weights/")}
  for a in (*weights.values(), *arrays.values()):
    a.flags.writeable = False  # shared by every test that reads this golden
  return Golden(config, weights, arrays)


def read_golden(name: str) -> Golden:
  """tests/goldens/<name>.npz, read once per session: read-only arrays in fresh containers (a test may edit
  the dicts). Unpacks as (config, weights, arrays)."""
  g = _cached_golden(name)
  return Golden(copy.deepcopy(g.config), dict(g.weights), dict(g.arrays))


@pytest.fixture(scope="session")
def tiny_asset(tmp_path_factory):
  """A random miniature generator saved in the shipped-asset layout, its emotion path made live (random
  instead of zero output layers) so GRPO updates are not all zero-gradient noise."""
  from emojax.io import assets
  from emojax.models import generator as gen_lib
  from emojax.models import mmdit, text_encoder
  mm = dataclasses.replace(mmdit.PRESETS["tiny"], num_layers=2, num_attention_heads=2, attention_head_dim=16,
                           joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32)
  tx = dataclasses.replace(text_encoder.PRESETS["tiny"], hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, projection_dim=32, max_position_embeddings=24)
  gcfg = gen_lib.GeneratorConfig(mmdit=mm, text=tx, num_emotion_tokens=2, emotion_hidden=32, max_text_length=96)
  gen = gen_lib.Generator(gcfg)
  params = jax.jit(lambda k: gen_lib.init_params(gen, k))(jax.random.key(3))
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.02 * jax.random.normal(jax.random.key(hash(str(p)) % 2**31), x.shape)
      if "emotion" in str(p) else x, params)
  path = str(tmp_path_factory.mktemp("asset") / "generator")
  assets.save(path, jax.device_get(params), gcfg.to_dict())
  return path


@pytest.fixture(scope="session")
def tiny_preference(tmp_path_factory):
  """(config, workdir, task, result) of a 3-step smoke run of the preference job; workdir/export is a CLIP
  directory (weights, config, tokenizer, preprocessor) that ClipScorer.from_pretrained reads."""
  from configs import pretrain_preference
  from emojax import trainer
  from emojax.tasks.pretrain_preference import PretrainPreference
  config = pretrain_preference.get_config("smoke")
  config.unlock()
  config.mesh.num_devices = 1
  workdir = tmp_path_factory.mktemp("pref")
  task = PretrainPreference(config)
  return config, workdir, task, trainer.run(config, str(workdir), task, progress=False)


def set_fields(c, **over):
  """c with dotted-path overrides ("rl.group_size": 4), unlocked."""
  c.unlock()
  for k, v in over.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def generator_config(asset, **over):
  """The smoke GRPO config on `asset`, colour-judge reward (in-graph: exact comparisons), MMDiT trained too."""
  from configs import generator as generator_cfg
  c = generator_cfg.get_config("smoke")
  return set_fields(c, **{"model.pretrained": asset, "model.frozen": ("text",),
                          "rewards.weights": {"colour_emotion": 1.0}, "eval.at_start": False, "eval_every": 1000,
                          "total_steps": 4, "checkpoint_every": 2, "rl.grad_accum": 2, **over})


def cli_env() -> dict:
  """Environment of CLI subprocesses: one CPU device, the tests' compilation cache."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "EMOJAX_COMPILATION_CACHE": _CACHE}


def _random_lvlm_params(config, seed=0):
  """Spiky random weights (small embeddings, large kernels, as tests/test_lvlm_sampling.py argues):
  peaked next-token distributions, so log-prob mismatches would show, unlike a near-uniform init."""
  from emojax.models import qwen_vl as qv
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name in ("scale", "bias"):
      return np.full(s.shape, float(name == "scale"), np.float32)
    std = 0.05 if name == "embedding" else 2 / np.sqrt(s.shape[0])
    return (std * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, qv.param_shapes(config))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
  """A 2-layer tiny-world LVLM (random) in the SFT export layout: half the layers compile in half the time."""
  from emojax.io import assets
  from emojax.models import qwen_vl as qv
  t = qv.PRESETS["tiny"]
  cfg = dataclasses.replace(t, num_hidden_layers=2, vision_config=dataclasses.replace(
      t.vision_config, depth=2, fullatt_block_indexes=(1,)))
  path = str(tmp_path_factory.mktemp("lvlm") / "export")
  assets.save(path, _random_lvlm_params(cfg), cfg.to_dict())
  return path
