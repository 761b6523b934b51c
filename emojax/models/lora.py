"""LoRA for any Flax model built from `nn.Dense`: low-rank adapters kept apart from the frozen weights,
the PEFT / diffusers file layout, and merging for export.

An adapted Dense computes W x + b + (alpha / r) · B(A(dropout(x))) — PEFT's LoraLayer with A (in, r)
Kaiming-uniform and B (r, out) zero, so a fresh adapter leaves the model unchanged. The adapters are a
tree of their own ({module path: {"lora_A", "lora_B"}}, mirroring the params tree), so the optimizer
sees only them, and the reference policy is the same params with LoRA off (`enabled` is a context, not
a second copy). `enabled(lora, config)` intercepts every `nn.Dense.__call__` whose path has an adapter,
inside whatever `apply` runs under it (jit included: interception happens at trace time).

Targets follow PEFT: a tuple of module names matches every Dense whose dotted path (torch spelling,
"transformer_blocks.3.attn.to_out.0") equals a name or ends with "." + name; a string is a regular
expression the whole dotted path must match. A pattern that matches nothing is an error.

File layout: diffusers' `save_lora_weights` / PEFT, `<prefix>.<dotted path>.lora_A.weight` (r, in) and
`.lora_B.weight` (out, r), with rank, alpha, dropout and targets in the safetensors metadata under
"lora_adapter_metadata" (so `load_lora_weights` rebuilds the same LoraConfig).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int = 32
  alpha: float = 64.0
  dropout: float = 0.0
  target_modules: tuple[str, ...] | str = ("to_q", "to_k", "to_v", "to_out.0")

  def __post_init__(self):
    if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
      raise ValueError(f"LoRA rank {self.rank}, alpha {self.alpha}, dropout {self.dropout}: need rank >= 1, "
                       "alpha > 0, 0 <= dropout < 1")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def dotted(path: tuple[str, ...]) -> str:
  """Flax module path -> torch module name: ("transformer_blocks_3", "attn", "to_out_0") ->
  "transformer_blocks.3.attn.to_out.0"."""
  return ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path)


def _matches(name: str, targets) -> bool:
  if isinstance(targets, str):
    return re.fullmatch(targets, name) is not None
  return any(name == t or name.endswith("." + t) for t in targets)


def target_paths(params, config: LoRAConfig) -> list[tuple[str, ...]]:
  """Module paths of the 2-D Dense kernels the targets match (an error when there are none)."""
  flat = traverse_util.flatten_dict(params)
  paths = [p[:-1] for p, v in flat.items() if p[-1] == "kernel" and np.ndim(v) == 2 and _matches(dotted(p[:-1]),
                                                                                                   config.target_modules)]
  if not paths:
    raise ValueError(f"LoRA target_modules {config.target_modules!r} match no Dense layer of the model "
                     f"(module names look like {dotted(next(iter(flat))[:-1])!r})")
  return sorted(paths)


def init(params, config: LoRAConfig, rng) -> dict:
  """Fresh adapters for every target: A ~ U(±1/sqrt(in)) (PEFT's Kaiming-uniform, a = sqrt(5)), B = 0."""
  flat, out = traverse_util.flatten_dict(params), {}
  for i, path in enumerate(target_paths(params, config)):
    d_in, d_out = flat[(*path, "kernel")].shape
    bound = 1.0 / np.sqrt(d_in)
    out[(*path, "lora_A")] = jax.random.uniform(jax.random.fold_in(rng, i), (d_in, config.rank), jnp.float32,
                                                -bound, bound)
    out[(*path, "lora_B")] = jnp.zeros((config.rank, d_out), jnp.float32)
  return traverse_util.unflatten_dict(out)


def _subtree(lora, path):
  node = lora
  for p in path:
    if not isinstance(node, dict) or p not in node:
      return None
    node = node[p]
  return node


def _lookup(lora, path):
  node = _subtree(lora, path)
  return node if isinstance(node, dict) and "lora_A" in node else None


_ACTIVE: list = []  # the enabled() contexts, innermost last; only the innermost one adapts


@contextlib.contextmanager
def enabled(lora, config: LoRAConfig, rng=None, root: tuple[str, ...] = ()):
  """Within this context every Dense with an adapter in `lora` adds it. `rng` (training only) drives
  the adapter's input dropout; `root` prefixes module paths when `lora` was made for a submodule's params.
  An adapter node may carry its own "dropout_key" (adapters_at adds them for scanned layers)."""
  context_entry = (lora, config, rng, root)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, nn.Dense) or _ACTIVE[-1] is not context_entry:
      return next_fun(*args, **kwargs)
    path = tuple(module.path)
    ab = _lookup(lora, path[len(root):]) if path[:len(root)] == root else None
    y = next_fun(*args, **kwargs)
    if ab is None:
      return y
    x = args[0]
    if config.dropout > 0 and (rng is not None or "dropout_key" in ab):
      key = (jax.random.wrap_key_data(ab["dropout_key"]) if "dropout_key" in ab else
             jax.random.fold_in(rng, zlib.crc32(dotted(path).encode()) & 0x7FFFFFFF))
      keep = jax.random.bernoulli(key, 1 - config.dropout, x.shape)
      x = jnp.where(keep, x / (1 - config.dropout), 0).astype(x.dtype)
    delta = (x @ ab["lora_A"].astype(x.dtype)) @ ab["lora_B"].astype(x.dtype)
    return y + (config.scale * delta).astype(y.dtype)

  _ACTIVE.append(context_entry)
  try:
    with nn.intercept_methods(interceptor):
      yield
  finally:
    _ACTIVE.remove(context_entry)


def adapters_at(path: tuple[str, ...]):
  """The innermost enabled() context's adapters below the module at `path` ({sub path: {"lora_A", "lora_B"}}, as
  nested dicts; dropout keys added when that context drops out), or None without LoRA or adapters there."""
  if not _ACTIVE:
    return None
  lora, config, rng, root = _ACTIVE[-1]
  if path[:len(root)] != root:
    return None
  node = _subtree(lora, path[len(root):])
  if not node:
    return None
  if rng is None or config.dropout == 0:
    return node
  is_leaf = lambda _, v: isinstance(v, dict) and "lora_A" in v
  flat = traverse_util.flatten_dict(node, is_leaf=is_leaf)
  key = lambda sub: jax.random.key_data(jax.random.fold_in(rng, zlib.crc32(dotted(path + sub).encode()) & 0x7FFFFFFF))
  return traverse_util.unflatten_dict({sub: {**ab, "dropout_key": key(sub)} for sub, ab in flat.items()})


def structure(adapters) -> tuple:
  """What a layer's adapters look like (paths and shapes): layers scan together only when theirs are equal."""
  return tuple(sorted((k, np.shape(v)) for k, v in traverse_util.flatten_dict(adapters or {}).items()))


@contextlib.contextmanager
def layer_scope(adapters):
  """Inside a scanned layer (an unbound module applied with one layer's params): `adapters` (that layer's slice of
  adapters_at) apply to its Dense calls, under the enclosing context's config. It always hides the enclosing
  context, whose paths the unbound module's relative ones would otherwise be matched against."""
  if not _ACTIVE:
    yield
    return
  with enabled(adapters or {}, _ACTIVE[-1][1]):
    yield


def merge(params, lora, config: LoRAConfig):
  """params with W + (alpha / r) A B in every adapted kernel (for export; the forward is then LoRA-free)."""
  flat = dict(traverse_util.flatten_dict(params))
  for path, ab in traverse_util.flatten_dict(lora, is_leaf=lambda _, v: isinstance(v, dict) and "lora_A" in v).items():
    k = flat[(*path, "kernel")]
    flat[(*path, "kernel")] = (k + config.scale * (ab["lora_A"] @ ab["lora_B"])).astype(k.dtype)
  return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------ jobs' params

GROUP = "lora"  # the adapters' top-level group in a job's params, beside the model's own groups


def grpo_config(c) -> LoRAConfig | None:
  """config.model.lora of a GRPO job -> LoRAConfig, or None for rank 0. Dropout is refused: with it the
  sampler and the update would score different policies and the on-policy ratio would not be 1."""
  if c.rank <= 0:
    return None
  if c.dropout > 0:
    raise ValueError(f"model.lora.dropout={c.dropout}: GRPO needs 0 (with dropout the rollout and the update "
                     "score different policies and the on-policy ratio is not 1)")
  return LoRAConfig(c.rank, c.alpha, 0.0, tuple(c.target_modules))


def with_adapters(params: dict, group: str, config: LoRAConfig, rng) -> dict:
  """params plus fresh host adapters (B = 0: the same model) for the Dense layers of params[group]."""
  return {**params, GROUP: jax.device_get(init(params[group], config, rng))}


def without(params: dict) -> dict:
  """The model's own groups (params without the adapters)."""
  return {k: v for k, v in params.items() if k != GROUP}


def merge_group(params: dict, group: str, config: LoRAConfig) -> dict:
  """The model's params with the adapters folded into params[group] (for evaluation and export)."""
  return {**without(params), group: merge(params[group], params[GROUP], config)}


# ------------------------------------------------------------------------------------ files


def to_peft_state_dict(lora, prefix: str = "transformer") -> dict[str, np.ndarray]:
  """PEFT / diffusers keys: f"{prefix}.{dotted path}.lora_A.weight" (r, in), ".lora_B.weight" (out, r)."""
  out = {}
  for path, ab in traverse_util.flatten_dict(lora, is_leaf=lambda _, v: isinstance(v, dict) and "lora_A" in v).items():
    name = ".".join(filter(None, (prefix, dotted(path))))
    out[f"{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(ab["lora_A"], np.float32).T)
    out[f"{name}.lora_B.weight"] = np.ascontiguousarray(np.asarray(ab["lora_B"], np.float32).T)
  return out


def metadata(config: LoRAConfig, prefix: str = "transformer") -> dict[str, str]:
  targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
  fields = {"r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout, "target_modules": targets,
            "bias": "none", "use_dora": False, "init_lora_weights": True}
  return {METADATA_KEY: json.dumps({f"{prefix}.{k}" if prefix else k: v for k, v in fields.items()})}


def save(path: str, lora, config: LoRAConfig, prefix: str = "transformer") -> None:
  """One safetensors file diffusers' `load_lora_weights` reads (write it as pytorch_lora_weights.safetensors)."""
  from safetensors.numpy import save_file
  save_file(to_peft_state_dict(lora, prefix), path, metadata=metadata(config, prefix))


def load(path: str, params, prefix: str = "transformer") -> tuple[dict, LoRAConfig]:
  """A PEFT / diffusers LoRA file -> (adapters for `params`' modules, its LoRAConfig). Rank comes from the
  tensors; alpha, dropout and targets from the metadata (alpha = rank without it, as PEFT assumes)."""
  from safetensors import safe_open
  with safe_open(path, framework="np") as f:
    state = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads((f.metadata() or {}).get(METADATA_KEY) or "{}")
  strip = f"{prefix}." if prefix else ""
  meta = {k[len(strip):]: v for k, v in meta.items() if k.startswith(strip)}
  modules = {dotted(p[:-1]): p[:-1] for p in traverse_util.flatten_dict(params) if p[-1] == "kernel"}
  flat, ranks = {}, set()
  for key, value in state.items():
    m = re.fullmatch(rf"{re.escape(strip)}(.+)\.(lora_A|lora_B)\.weight", key)
    if m is None or m.group(1) not in modules:
      raise ValueError(f"LoRA tensor {key!r} in {path} names no Dense layer of this model")
    flat[(*modules[m.group(1)], m.group(2))] = np.asarray(value, np.float32).T
    ranks.add(value.shape[0] if m.group(2) == "lora_A" else value.shape[1])
  if len(ranks) != 1:
    raise ValueError(f"LoRA file {path} mixes ranks {sorted(ranks)}; one rank per file is supported")
  (rank,) = ranks
  targets = meta.get("target_modules") or sorted({dotted(p[:-1]) for p in flat})  # exact names without metadata
  config = LoRAConfig(rank=rank, alpha=float(meta.get("lora_alpha", rank)), dropout=float(meta.get("lora_dropout", 0)),
                      target_modules=targets if isinstance(targets, str) else tuple(targets))
  return traverse_util.unflatten_dict(flat), config

