"""Mesh construction, rule-based parameter shardings and sharded init (8 simulated CPU devices)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from emojax import parallel


def mesh_cfg(data=-1, fsdp=1, tensor=1, num_devices=-1):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, num_devices=num_devices))


def test_make_mesh():
  assert jax.device_count() == 8
  assert dict(parallel.make_mesh(-1, 2, 1).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert dict(parallel.make_mesh(2, -1, 2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert parallel.make_mesh(1, 1, -1).axis_names == ("data", "fsdp", "tensor")
  assert dict(parallel.mesh_from_config(mesh_cfg(-1, 1, 2, num_devices=4)).shape) == {"data": 2, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize("kw, match", [
    (dict(data=-1, fsdp=-1), "at most one axis may be -1"),
    (dict(data=2, fsdp=2, tensor=1), "data\\*fsdp\\*tensor = 4 but 8 devices"),
    (dict(data=-1, fsdp=3), "not divisible by fixed axes product 3"),
])
def test_make_mesh_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    parallel.make_mesh(**kw)


def test_mesh_from_config_too_many_devices():
  with pytest.raises(ValueError, match="mesh.num_devices=16 but only 8 devices"):
    parallel.mesh_from_config(mesh_cfg(num_devices=16))


def abstract_params():
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return {
      "layers_0": {"self_attn": {"q_proj": {"kernel": s(8, 16), "bias": s(16)},
                                 "out_proj": {"kernel": s(16, 8), "bias": s(8)}},
                   "fc1": {"kernel": s(7, 6)},  # 7 not divisible by fsdp=2, 6 not by tensor=4
                   "layer_norm1": {"scale": s(8), "bias": s(8)}},
      "token_embedding": {"embedding": s(10, 8)},
      "proj": {"kernel": s(8, 4)},
  }


def test_param_shardings():
  mesh = parallel.make_mesh(2, 2, 2)
  spec = jax.tree.map(lambda s: s.spec, parallel.param_shardings(abstract_params(), mesh))
  assert spec["layers_0"]["self_attn"]["q_proj"] == {"kernel": P("fsdp", "tensor"), "bias": P(None)}
  assert spec["layers_0"]["self_attn"]["out_proj"]["kernel"] == P("tensor", "fsdp")
  assert spec["layers_0"]["fc1"]["kernel"] == P(None, "tensor")  # 7 % fsdp: replicated on that axis
  assert spec["layers_0"]["layer_norm1"] == {"scale": P(None), "bias": P(None)}
  assert spec["token_embedding"]["embedding"] == P("tensor", "fsdp")
  assert spec["proj"]["kernel"] == P("fsdp", None)
  # tensor=4 divides neither 6 nor 7: fc1 fully replicated; size-1 axes never appear in specs.
  spec = jax.tree.map(lambda s: s.spec, parallel.param_shardings(abstract_params(), parallel.make_mesh(1, 2, 4)))
  assert spec["layers_0"]["fc1"]["kernel"] == P(None, None)
  assert spec["layers_0"]["self_attn"]["q_proj"]["kernel"] == P("fsdp", "tensor")
  spec = jax.tree.map(lambda s: s.spec, parallel.param_shardings(abstract_params(), parallel.make_mesh(8, 1, 1)))
  assert all(s == P(*(None,) * len(s)) for s in jax.tree.leaves(spec, is_leaf=lambda x: isinstance(x, P)))


def test_check_batch():
  mesh = parallel.make_mesh(2, 2, 2)
  parallel.check_batch(12, mesh)
  with pytest.raises(ValueError, match="eval batch of 6 is not divisible by mesh data\\*fsdp = 4"):
    parallel.check_batch(6, mesh, what="eval batch")


def test_init_sharded_and_put_batch():
  mesh = parallel.make_mesh(2, 2, 2)
  init = lambda key: {"q_proj": {"kernel": jax.random.normal(key, (8, 16)), "bias": jnp.zeros(16)},
                      "fc2": {"kernel": jax.random.normal(key, (16, 8))}}
  params, shardings = parallel.init_sharded(init, mesh, jax.random.key(0))
  assert shardings["q_proj"]["kernel"] == NamedSharding(mesh, P("fsdp", "tensor"))
  jax.tree.map(lambda x, s: (x.sharding == s) or pytest.fail(f"{x.sharding} != {s}"), params, shardings)
  assert params["q_proj"]["kernel"].addressable_shards[0].data.shape == (4, 8)
  np.testing.assert_array_equal(params["q_proj"]["kernel"], init(jax.random.key(0))["q_proj"]["kernel"])
  batch = parallel.put_batch({"x": np.arange(8 * 3).reshape(8, 3)}, mesh)
  assert batch["x"].sharding == parallel.batch_sharding(mesh) and batch["x"].addressable_shards[0].data.shape == (2, 3)


def test_configs_name_the_rule_sets_parallel_has():
  from emojax import config_utils
  assert set(config_utils.RULE_SETS) == set(parallel.PARAM_RULES)
  c = config_utils.sharding("qwen_vl")
  rules = parallel.rules_from_config(c)
  assert rules == dict(param_rules=parallel.PARAM_RULES["qwen_vl"], logical_rules=parallel.LOGICAL_RULES)
  c.extra_param_rules = [(".*lm_head/kernel$", ["embed", None])]
  c.logical_rules = [("embed", ["data", "fsdp"])]
  rules = parallel.rules_from_config(c)
  assert rules["param_rules"] == ((".*lm_head/kernel$", ["embed", None]),) + parallel.PARAM_RULES["qwen_vl"]
  assert dict(rules["logical_rules"]) == dict(parallel.LOGICAL_RULES) | {"embed": ("data", "fsdp")}
  fields = config_utils.Fields()
  fields.include("sharding", config_utils.sharding_fields())
  bad = fields.config()
  bad.sharding.param_rules = "qwen"
  with pytest.raises(ValueError, match="sharding.param_rules='qwen' is out of range"):
    config_utils.validate(bad, fields)


def test_split_rows_is_strided_and_merge_inverts_it():
  x = np.arange(24 * 3).reshape(24, 3)
  parts = np.asarray(parallel.split_rows(jnp.asarray(x), 4))
  assert parts.shape == (4, 6, 3)
  np.testing.assert_array_equal(parts[1], x[1::4])  # part i: items i, i + n, ...
  grouped = np.asarray(parallel.split_rows(jnp.asarray(x), 2, rows_per_item=3))  # items of 3 contiguous rows
  np.testing.assert_array_equal(grouped[1, :3], x[3:6])
  np.testing.assert_array_equal(grouped[1, 3:6], x[9:12])
  for k in (1, 3):
    np.testing.assert_array_equal(parallel.merge_rows(parallel.split_rows(jnp.asarray(x), 2, k), k), x)
  with pytest.raises(ValueError, match="24 rows do not split into 5 equal parts"):
    parallel.split_rows(jnp.asarray(x), 5)


def test_map_rows_equals_the_whole_batch_and_moves_no_rows_between_devices():
  """On a batch sharded over 8 devices: chunked == unchunked, and the compiled program has no collective (each
  part takes the same rows of every device, so each device works on its own rows only)."""
  mesh = parallel.make_mesh(-1, 1, 1)
  w = jax.random.normal(jax.random.key(0), (16, 16))
  fn = lambda x, y: {"h": jnp.tanh(x @ w) * y[:, None], "s": (x ** 2).sum(-1)}
  x = jax.device_put(jax.random.normal(jax.random.key(1), (32, 16)), parallel.batch_sharding(mesh))
  y = jax.device_put(jnp.arange(32.0), parallel.batch_sharding(mesh))
  want = jax.jit(fn)(x, y)
  chunked = jax.jit(lambda a, b: parallel.map_rows(fn, 4, a, b))
  got = chunked(x, y)
  for k in want:  # a part's matmul has other shapes, so XLA:CPU may sum in another order (seen: 1.2e-5 at |y| ~ 14)
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5, atol=5e-5)
  hlo = chunked.lower(x, y).compile().as_text()
  assert not any(op in hlo for op in ("all-to-all", "all-gather", "collective-permute", "all-reduce")), \
      "map_rows moved rows between devices"
  assert parallel.map_rows(fn, 1, x, y)["s"].shape == (32,)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_mmdit_rows_stay_on_their_devices_under_fsdp(scan_layers):
  """An MMDiT's gradient with params and rows sharded over fsdp=8: equal to the unsharded gradient, and no
  all-reduce of a whole-batch activation (XLA's propagation replicated the rows through the scan and the context
  stream, and summed per-device partial dots, until the blocks' outputs were held batch-sharded)."""
  import dataclasses
  import re
  from emojax.models import mmdit
  config = dataclasses.replace(mmdit.PRESETS["tiny"], num_layers=6, dual_attention_layers=(0,))
  x = mmdit.dummy_inputs(config, batch_size=8, context_len=3)
  x = (*(jax.random.normal(jax.random.key(i), a.shape) for i, a in enumerate(x[:3])), jnp.linspace(100.0, 900.0, 8))
  model = mmdit.MMDiT(config, scan_layers=scan_layers, remat="full")
  params = jax.jit(model.init)(jax.random.key(5), *x)["params"]
  params = jax.tree.map(lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)), params)
  mesh = parallel.make_mesh(1, 8, 1)
  shard = parallel.param_shardings(params, mesh, parallel.MMDIT_PARAM_RULES)
  rows = parallel.batch_sharding(mesh)
  grad = jax.grad(lambda p, *x: jnp.mean(model.apply({"params": p}, *x) ** 2))
  want = jax.jit(grad)(params, *x)
  with jax.set_mesh(mesh):
    sharded = jax.jit(grad, in_shardings=(shard, rows, rows, rows, rows))
    got = sharded(jax.device_put(params, shard), *(jax.device_put(a, rows) for a in x))
    hlo = sharded.lower(params, *x).compile().as_text()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, want)
  whole_batch = [s for s in re.findall(r"(\w+\[[\d,]+\])\S* all-reduce\(", hlo) if re.match(r"\w+\[8,", s)]
  assert not whole_batch, whole_batch
