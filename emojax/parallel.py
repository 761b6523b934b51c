"""Device mesh, sharding rules, and abstract-first initialisation.

Mesh axes are (data, fsdp, tensor). Parameters get logical axis names from regex rules on
their path, and logical names map to mesh axes by a second rule table; configs name a set below or give their own.
A dimension that a mesh axis does not divide stays replicated on that axis (noted once), so
the same rules serve a tiny CPU model and a 7B one. Activations' batch dimension is sharded
over (data, fsdp).
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

# Parameter path regex -> logical axes, first match wins; dense kernels are (in, out): column-parallel layers shard
# out over tensor, row-parallel ones in.
_FSDP_TAIL = (  # what no model-specific rule matched: every kernel fsdp over its input dimension
    (r".*/kernel$", ("embed", None)),
    (r".*/lora_A$", ("embed", None)),  # LoRA adapters (d_in, r) and (r, d_out): fsdp over the model width
    (r".*/lora_B$", (None, "embed")),
    (r".*", None),  # everything else (norms, biases, small tensors): replicated
)
DEFAULT_PARAM_RULES = (
    (r".*(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|q_proj|k_proj|v_proj|fc1|gate_proj|up_proj|net_0.*|proj_in|linear_1)/kernel$", ("embed", "mlp")),
    (r".*(to_out.*|to_add_out|out_proj|o_proj|fc2|down_proj|net_2)/kernel$", ("mlp", "embed")),
    (r".*(embedding|token_embedding|embed_tokens)$", ("vocab", "embed")),
) + _FSDP_TAIL
# The MMDiT (SD3 / SD3.5 transformer; the tiny generator adds its CLIP-style text encoder, matched by the defaults
# after): attention projections split by heads and the feed-forward by width over tensor (Megatron column / row
# pairs), every other kernel (adaLN modulations, the largest, and the embedders) fsdp over its input dimension.
MMDIT_PARAM_RULES = (
    (r".*attn2?/(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)/kernel$", ("embed", "heads")),
    (r".*attn2?/(to_out_0|to_add_out)/kernel$", ("heads", "embed")),
    (r".*/net_0/proj/kernel$", ("embed", "mlp")),
    (r".*/net_2/kernel$", ("mlp", "embed")),
    (r".*pos_embed/pos_embed$", (None, "embed", None)),  # the (1, M*M, D) sincos buffer: 0.9 GB f32 in SD3.5-M
) + DEFAULT_PARAM_RULES
# Qwen2.5-VL: the decoder's and the vision blocks' attention and SwiGLU MLP tensor-parallel, the token embedding
# split over the vocabulary; the vision attention's fused qkv, the patch embedding and the merger fsdp only (tensor
# over a fused q|k|v output would split across the three). The untied lm_head is vocabulary-parallel over every
# model axis (`constrain_logits`): split over its input width, each matmul would all-gather the whole (D, V) kernel
# and its gradient would come back whole (7B: 2.2 GB f32 each).
QWEN_VL_PARAM_RULES = (
    (r".*self_attn/(q_proj|k_proj|v_proj)/kernel$", ("embed", "heads")),
    (r".*self_attn/o_proj/kernel$", ("heads", "embed")),
    (r".*mlp/(gate_proj|up_proj)/kernel$", ("embed", "mlp")),
    (r".*mlp/down_proj/kernel$", ("mlp", "embed")),
    (r".*embed_tokens/embedding$", ("vocab", "embed")),
    (r".*lm_head/kernel$", (None, "head_vocab")),
) + _FSDP_TAIL
BATCH_AXES = ("data", "fsdp")
LOGICAL_RULES = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("head_vocab", ("tensor", "fsdp")),
    ("batch", BATCH_AXES),
)
PARAM_RULES = {"default": DEFAULT_PARAM_RULES, "mmdit": MMDIT_PARAM_RULES, "qwen_vl": QWEN_VL_PARAM_RULES}


def rules_from_config(sharding) -> dict:
  """config.sharding -> {param_rules, logical_rules}: its extra rules before the named set, its logical entries over
  LOGICAL_RULES'."""
  logical = dict(LOGICAL_RULES) | {name: axes for name, axes in sharding.logical_rules}
  return dict(param_rules=tuple(map(tuple, sharding.extra_param_rules)) + PARAM_RULES[sharding.param_rules],
              logical_rules=tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in logical.items()))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh of shape (data, fsdp, tensor); one entry may be -1 to take the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh: {len(devices)} devices are not divisible by fixed axes product {known} (data={data} fsdp={fsdp} tensor={tensor})")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh: data*fsdp*tensor = {math.prod(shape)} but {len(devices)} devices are present; set config.mesh so the product matches (or use -1)")
  return jax.make_mesh(tuple(shape), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def mesh_from_config(cfg) -> Mesh:
  n = cfg.get("num_devices", -1)
  devices = jax.devices() if n == -1 else jax.devices()[:n]
  if n != -1 and len(devices) < n:
    raise ValueError(f"mesh.num_devices={n} but only {len(devices)} devices are present")
  return make_mesh(cfg.data, cfg.fsdp, cfg.tensor, devices=devices)


def batch_size_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(batch_size: int, mesh: Mesh, what: str = "batch") -> None:
  div = batch_size_divisor(mesh)
  if batch_size % div:
    raise ValueError(f"{what} of {batch_size} is not divisible by mesh data*fsdp = {div}; change the batch size or config.mesh")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain_batch(x):
  """x sharded over the batch axes of the mesh in context (the trainer's `jax.set_mesh`), e.g. noise drawn inside
  a jitted step, which XLA would otherwise replicate with all the compute that follows; unchanged without one."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a in BATCH_AXES if not mesh.empty and a in mesh.axis_names)
  if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return x
  return jax.lax.with_sharding_constraint(x, P(axes))


def constrain_logits(x):
  """Logits (..., V) of a vocabulary-parallel head: the vocabulary split as its kernel (tensor x fsdp), the rows over
  data, so the head gathers the hidden states (small) rather than its kernel, and softmax reductions over V become
  all-reduces of one number a position; unchanged without a mesh or where the axes do not divide V."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(AXES) <= set(mesh.axis_names):
    return x
  vocab = tuple(a for a in ("tensor", "fsdp") if mesh.shape[a] > 1)
  size = math.prod(mesh.shape[a] for a in vocab)
  if not vocab or x.shape[-1] % size:
    return x
  rows = "data" if mesh.shape["data"] > 1 and x.shape[0] % mesh.shape["data"] == 0 else None
  return jax.lax.with_sharding_constraint(x, P(rows, *(None,) * (x.ndim - 2), vocab))


def split_rows(x, n: int, rows_per_item: int = 1):
  """(B, ...) -> (n, B/n, ...): part i holds items i, i + n, ... (an item = rows_per_item contiguous rows), so
  every part spans every device's rows of a batch-sharded x and the split moves no data between devices."""
  b = x.shape[0] // rows_per_item
  if b % n:
    raise ValueError(f"{b} rows do not split into {n} equal parts")
  x = x.reshape(b // n, n, rows_per_item, *x.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape(n, (b // n) * rows_per_item, *x.shape[3:])


def merge_rows(y, rows_per_item: int = 1):
  """Inverse of `split_rows`: (n, B/n, ...) -> (B, ...)."""
  n, m = y.shape[:2]
  y = y.reshape(n, m // rows_per_item, rows_per_item, *y.shape[2:])
  return jnp.swapaxes(y, 0, 1).reshape(n * m, *y.shape[3:])


def map_rows(fn: Callable, n: int, *trees):
  """fn(*trees) for row-independent fn, computed on n parts of the rows one after another (`lax.map` over
  `split_rows`): the memory of fn's intermediates is that of B/n rows. n=1 calls fn directly."""
  if n == 1:
    return fn(*trees)
  out = jax.lax.map(lambda parts: fn(*parts), jax.tree.map(lambda x: split_rows(x, n), trees))
  return jax.tree.map(merge_rows, out)


def _path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def _logical_names(name: str, ndim: int, compiled) -> tuple:
  for rx, names in compiled:
    if rx.fullmatch(name):
      if names is None or ndim == 0:
        return (None,) * ndim
      names = tuple(names)
      # a rule written for another rank: align on trailing dims, extra leading dims unsharded
      return ((None,) * max(0, ndim - len(names)) + names)[-ndim:]
  return (None,) * ndim


def logical_axes(tree, param_rules=DEFAULT_PARAM_RULES):
  """Pytree of tuples of logical names (or None) per leaf, from the first matching regex."""
  compiled = [(re.compile(rx), names) for rx, names in param_rules]
  return jax.tree_util.tree_map_with_path(lambda p, x: _logical_names(_path_str(p), len(x.shape), compiled), tree)


def _spec_for(shape, names, mesh: Mesh, logical_rules) -> P:
  table = dict(logical_rules)
  used: set[str] = set()
  spec = []
  for dim, name in zip(shape, names):
    axes = table.get(name) if name else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if not axes or dim % size:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def param_shardings(abstract_tree, mesh: Mesh, param_rules=DEFAULT_PARAM_RULES, logical_rules=LOGICAL_RULES):
  compiled = [(re.compile(rx), names) for rx, names in param_rules]

  def one(path, leaf):
    names = _logical_names(_path_str(path), len(leaf.shape), compiled)
    return NamedSharding(mesh, _spec_for(leaf.shape, names, mesh, logical_rules))

  return jax.tree_util.tree_map_with_path(one, abstract_tree)


def state_shardings(abstract_state, mesh: Mesh, param_rules=DEFAULT_PARAM_RULES, logical_rules=LOGICAL_RULES):
  """Shardings for a whole train state: optimizer moments mirror their parameters' shapes,
  so the same path rules apply (optax keeps parameter names in its state paths)."""
  return param_shardings(abstract_state, mesh, param_rules, logical_rules)


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, *args, param_rules=DEFAULT_PARAM_RULES,
                 logical_rules=LOGICAL_RULES):
  """eval_shape -> shardings -> jit(init, out_shardings): nothing materialises unsharded."""
  abstract = jax.eval_shape(init_fn, *args)
  shardings = param_shardings(abstract, mesh, param_rules, logical_rules)
  return jax.jit(init_fn, out_shardings=shardings)(*args), shardings


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays sharded over (data, fsdp)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def host_rows(batch: dict[str, jax.Array], mesh: Mesh) -> dict[str, np.ndarray]:
  """Global batch-sharded arrays -> this host's rows as numpy (the inverse of put_batch)."""
  if jax.process_count() == 1:
    return jax.device_get(batch)
  from jax.experimental import multihost_utils
  spec = batch_sharding(mesh).spec
  return jax.device_get(multihost_utils.global_array_to_host_local_array(batch, mesh, spec))


def to_host(tree):
  """A pytree of (possibly sharded, possibly multi-process) arrays as whole numpy arrays on every process, reading
  only data this process holds: fully addressable or fully replicated leaves locally, others through an
  all-gather (a collective: every process must call it at the same point). Numpy leaves pass through."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (a collective with more than one process; the preemption sync point:
  a SIGTERM that reached one host stops every host after the same step)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.array([flag], np.int32))))


class PeerLostError(RuntimeError):
  """A collective across processes failed: another process died (or its host did)."""


def peer_lost(error: Exception, where: str) -> PeerLostError:
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return PeerLostError(f"a collective across the {jax.process_count()} processes failed ({first}): another process "
                       f"has died; {where}")


LAUNCH_ENV = ("EMOJAX_COORDINATOR", "EMOJAX_NUM_PROCESSES", "EMOJAX_PROCESS_ID")  # set by launch/local.sh


def wait_for_coordinator(address: str, timeout: float) -> None:
  """Returns once the coordinator's port accepts connections; a one-line ValueError after `timeout` seconds
  (JAX itself would abort the process with a deadline error)."""
  import socket
  import time
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ValueError(f"coordinator {address} is not reachable after {timeout:g} s ({e.strerror or e}): start "
                         f"process 0 there (EMOJAX_COORDINATOR), or raise EMOJAX_INIT_TIMEOUT") from None
      time.sleep(0.5)


def initialize_distributed() -> None:
  """Multi-process init: explicit (launch/local.sh sets LAUNCH_ENV; EMOJAX_INIT_TIMEOUT seconds, default 120, to
  reach the coordinator; EMOJAX_HEARTBEAT_TIMEOUT seconds, default 100, after which a dead process fails the rest),
  else auto-detected on TPU VMs and SLURM; a no-op on a single process."""
  import os
  if "EMOJAX_COORDINATOR" in os.environ:
    missing = [k for k in LAUNCH_ENV if not os.environ.get(k)]
    if missing:
      raise ValueError(f"EMOJAX_COORDINATOR is set but {', '.join(missing)} is not (launch/local.sh sets all three)")
    timeout = int(os.environ.get("EMOJAX_INIT_TIMEOUT", "120"))
    if int(os.environ["EMOJAX_PROCESS_ID"]) != 0:  # process 0 hosts the coordinator; the others must reach it
      wait_for_coordinator(os.environ["EMOJAX_COORDINATOR"], timeout)
    jax.distributed.initialize(coordinator_address=os.environ["EMOJAX_COORDINATOR"],
                               num_processes=int(os.environ["EMOJAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["EMOJAX_PROCESS_ID"]),
                               initialization_timeout=timeout,
                               heartbeat_timeout_seconds=int(os.environ.get("EMOJAX_HEARTBEAT_TIMEOUT", "100")))
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return
  if any(k in os.environ for k in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")):
    if int(os.environ.get("SLURM_NTASKS", "2")) > 1:
      jax.distributed.initialize()
      logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
