"""Stable Diffusion 3 / 3.5 MMDiT: diffusers' `SD3Transformer2DModel` in Flax linen.

Module names mirror diffusers so checkpoint keys map mechanically, e.g.
`transformer_blocks.3.attn.to_out.0.weight` <-> params["transformer_blocks_3"]["attn"]["to_out_0"]["kernel"]
(Dense kernels are transposed torch Linear weights). Images are NHWC; diffusers is NCHW.

`params["pos_embed"]["pos_embed"]` is diffusers' persistent `pos_embed` buffer: the (1, M*M, D) 2-D sincos
table that is centre-cropped to the token grid. It is carried as a parameter, not recomputed, because real
checkpoints store a table that differs from diffusers' own formula (SD3-Medium's is a centred grid), and
the forward pass stops its gradient. Exclude it from weight decay when fine-tuning all weights.
"""
import dataclasses
import functools
import json
import math
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from emojax import parallel
from emojax.io import hf_weights
from emojax.models import attention as attention_lib
from emojax.models import dense as dense_lib
from emojax.models import lora as lora_lib
from emojax.models import remat as remat_lib
from emojax.models.config_fields import known_fields

Dtype = Any


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
  """Field names and defaults are those of diffusers' SD3Transformer2DModel config."""

  sample_size: int = 128
  patch_size: int = 2
  in_channels: int = 16
  num_layers: int = 18
  attention_head_dim: int = 64
  num_attention_heads: int = 18
  joint_attention_dim: int = 4096
  caption_projection_dim: int = 1152
  pooled_projection_dim: int = 2048
  out_channels: int | None = 16
  pos_embed_max_size: int = 96
  dual_attention_layers: tuple[int, ...] = ()
  qk_norm: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "dual_attention_layers", tuple(int(i) for i in self.dual_attention_layers))
    if self.out_channels is None:
      object.__setattr__(self, "out_channels", self.in_channels)
    if self.qk_norm not in (None, "rms_norm"):
      raise ValueError(f"MMDiTConfig.qk_norm={self.qk_norm!r}: only None and 'rms_norm' are supported")
    if self.caption_projection_dim != self.inner_dim:
      raise ValueError(f"MMDiTConfig.caption_projection_dim={self.caption_projection_dim} must equal "
              f"num_attention_heads*attention_head_dim={self.inner_dim}")
    if self.pos_embed_max_size * self.patch_size < self.sample_size:
      raise ValueError(f"MMDiTConfig.pos_embed_max_size={self.pos_embed_max_size} is smaller than the "
              f"sample_size/patch_size={self.sample_size // self.patch_size} token grid")

  @property
  def inner_dim(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @classmethod
  def from_dict(cls, d: dict) -> "MMDiTConfig":
    """Keys starting with "_" (diffusers' `_class_name`, `_diffusers_version`, ...) are ignored."""
    return cls(**known_fields(cls, d))

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> "MMDiTConfig":
    with open(path) as f:
      return cls.from_dict(json.load(f))

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["dual_attention_layers"] = list(self.dual_attention_layers)
    return d


PRESETS = {
  # Pixel-space generator for the 32x32x3 EmoShapes world; patch 4 keeps it to 64 image
  # tokens, which is what makes GRPO fit in minutes on a 2-core CPU.
  "tiny": MMDiTConfig(
    sample_size=32, patch_size=4, in_channels=3, out_channels=3, num_layers=4, attention_head_dim=32,
    num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=128, pooled_projection_dim=128,
    pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm"),
  # stabilityai/stable-diffusion-3.5-medium, transformer/config.json.
  "sd35m": MMDiTConfig(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
}


# ----------------------------------------------------------------------------------------------- math


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
  """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: [cos, sin] halves."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_pos_embed_table(config: MMDiTConfig) -> jax.Array:
  """diffusers' `get_2d_sincos_pos_embed` table, (1, M*M, D): [sincos(column), sincos(row)] per cell."""
  m, d = config.pos_embed_max_size, config.inner_dim
  pos = jnp.arange(m, dtype=jnp.float32) / (m / (config.sample_size // config.patch_size))
  omega = 1.0 / 10000.0 ** (jnp.arange(d // 4, dtype=jnp.float32) / (d // 4))
  angle = pos[:, None] * omega
  emb = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)  # (M, D/2)
  cols = jnp.broadcast_to(emb[None, :, :], (m, m, d // 2))
  rows = jnp.broadcast_to(emb[:, None, :], (m, m, d // 2))
  return jnp.concatenate([cols, rows], axis=-1).reshape(1, m * m, d)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Affine-free LayerNorm (every LayerNorm in the model), statistics in fp32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None]) + shift[:, None]


# -------------------------------------------------------------------------------------------- modules


def _dense(m: nn.Module, features: int, name: str) -> nn.Dense:
  return dense_lib.Dense(features, dtype=m.dtype, param_dtype=m.param_dtype, name=name)


class PatchEmbed(nn.Module):
  config: MMDiTConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c, p = self.config, self.config.patch_size
    b, height, width, _ = x.shape
    h, w, m = height // p, width // p, c.pos_embed_max_size
    if height % p or width % p or h > m or w > m:
      raise ValueError(f"MMDiT input {height}x{width} must be a multiple of patch_size={p} and at most "
              f"pos_embed_max_size*patch_size={m * p}")
    x = nn.Conv(c.inner_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
          param_dtype=self.param_dtype, name="proj")(x)
    table = self.param("pos_embed", lambda _, shape, dtype: sincos_pos_embed_table(c).astype(dtype),
             (1, m * m, c.inner_dim), self.param_dtype)
    top, left = (m - h) // 2, (m - w) // 2
    pos = jax.lax.stop_gradient(table).reshape(m, m, -1)[top:top + h, left:left + w].reshape(1, h * w, -1)
    return (x.reshape(b, h * w, -1) + pos).astype(self.dtype)


class MLPEmbedder(nn.Module):
  """Linear-SiLU-Linear: diffusers' TimestepEmbedding and PixArtAlphaTextProjection(act_fn="silu")."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _dense(self, self.features, "linear_2")(nn.silu(_dense(self, self.features, "linear_1")(x)))


class TimeTextEmbed(nn.Module):
  """diffusers' CombinedTimestepTextProjEmbeddings."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, timestep, pooled):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t = MLPEmbedder(self.features, **kw, name="timestep_embedder")(timestep_embedding(timestep))
    return t + MLPEmbedder(self.features, **kw, name="text_embedder")(pooled)


class Modulation(nn.Module):
  """The `linear` of diffusers' AdaLayerNorm* modules: silu(temb) -> num_chunks vectors of width dim."""

  num_chunks: int
  dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, temb):
    return jnp.split(_dense(self, self.num_chunks * self.dim, "linear")(nn.silu(temb)), self.num_chunks, -1)


class Attention(nn.Module):
  """Multi-head attention over [image tokens; context tokens] (context optional), diffusers' order."""

  config: MMDiTConfig
  context_pre_only: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation

  @nn.compact
  def __call__(self, x, context=None):
    c = self.config

    def project(t, name, norm_name=None):
      t = _dense(self, c.inner_dim, name)(t).reshape(*t.shape[:-1], c.num_attention_heads, -1)
      if norm_name and c.qk_norm:
        t = nn.RMSNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name=norm_name)(t)
      return t

    q, k, v = project(x, "to_q", "norm_q"), project(x, "to_k", "norm_k"), project(x, "to_v")
    if context is not None:
      q = jnp.concatenate([q, project(context, "add_q_proj", "norm_added_q")], axis=1)
      k = jnp.concatenate([k, project(context, "add_k_proj", "norm_added_k")], axis=1)
      v = jnp.concatenate([v, project(context, "add_v_proj")], axis=1)
    out = attention_lib.dot_product_attention(q, k, v, implementation=self.attention).reshape(*q.shape[:2], -1)
    x_out = _dense(self, c.inner_dim, "to_out_0")(out[:, :x.shape[1]])
    if context is None:
      return x_out
    if self.context_pre_only:
      return x_out, None
    return x_out, _dense(self, c.inner_dim, "to_add_out")(out[:, x.shape[1]:])


class GELUProjection(nn.Module):
  """diffusers' GELU activation module, which owns the feed-forward input projection `proj`."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return jax.nn.gelu(_dense(self, self.features, "proj")(x), approximate=True)


class FeedForward(nn.Module):
  dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    return _dense(self, self.dim, "net_2")(GELUProjection(4 * self.dim, **kw, name="net_0")(x))


class JointTransformerBlock(nn.Module):
  config: MMDiTConfig
  context_pre_only: bool = False
  dual_attention: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, ctx, temb):
    d = self.config.inner_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    shift, scale, gate, shift_mlp, scale_mlp, gate_mlp, *dual = Modulation(
      9 if self.dual_attention else 6, d, **kw, name="norm1")(temb)
    x_norm = layer_norm(x)
    if self.context_pre_only:  # AdaLayerNormContinuous: (scale, shift), the reverse of AdaLayerNormZero
      c_scale, c_shift = Modulation(2, d, **kw, name="norm1_context")(temb)
    else:
      c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = Modulation(
        6, d, **kw, name="norm1_context")(temb)

    attn = functools.partial(Attention, self.config, **kw, attention=self.attention)
    attn_out, ctx_attn_out = attn(self.context_pre_only, name="attn")(
      modulate(x_norm, shift, scale), modulate(layer_norm(ctx), c_shift, c_scale))
    x = x + gate[:, None] * attn_out
    if self.dual_attention:  # SD3.5 image-only self-attention, modulating the same pre-attention norm
      shift2, scale2, gate2 = dual
      x = x + gate2[:, None] * attn(name="attn2")(modulate(x_norm, shift2, scale2))
    x = x + gate_mlp[:, None] * FeedForward(d, **kw, name="ff")(modulate(layer_norm(x), shift_mlp, scale_mlp))
    if self.context_pre_only:
      return x, None

    ctx = ctx + c_gate[:, None] * ctx_attn_out
    ctx_ff = FeedForward(d, **kw, name="ff_context")(modulate(layer_norm(ctx), c_shift_mlp, c_scale_mlp))
    return x, ctx + c_gate_mlp[:, None] * ctx_ff


class MMDiT(nn.Module):
  """SD3 / SD3.5 transformer. Call with NHWC images, (B, L, joint_attention_dim) context, (B, pooled) vectors
  and (B,) timesteps in diffusers' convention (sigma * 1000); returns the NHWC velocity."""

  config: MMDiTConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # rematerialise each joint block in the backward pass (emojax.models.remat)
  # run each run of identical joint blocks as one lax.scan over their stacked params: XLA compiles the block
  # once instead of once per layer; the params tree is the same (per layer), so weights load and export as
  # ever. LoRA adapters are stacked alike (blocks whose adapters differ scan apart).
  scan_layers: bool = False
  attention: str = "auto"  # emojax.models.attention implementation of every block (model.attention)

  @nn.compact
  def __call__(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
    c, p = self.config, self.config.patch_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, height, width, _ = hidden_states.shape
    timestep = jnp.broadcast_to(timestep, (b,))

    x = PatchEmbed(c, **kw, name="pos_embed")(hidden_states)
    temb = TimeTextEmbed(c.inner_dim, **kw, name="time_text_embed")(timestep, pooled_projections)
    ctx = _dense(self, c.caption_projection_dim, "context_embedder")(encoder_hidden_states)
    block = remat_lib.block(JointTransformerBlock, self.remat)
    scanning = self.scan_layers and not self.is_initializing()
    adapters = [lora_lib.adapters_at((*self.path, f"transformer_blocks_{i}")) if scanning else None
                for i in range(c.num_layers)]
    kinds = [(i == c.num_layers - 1, i in c.dual_attention_layers, lora_lib.structure(adapters[i]))
             for i in range(c.num_layers)]
    for i, end in remat_lib.runs(kinds, scanning):
      if end - i > 1:
        x, ctx = self._scan_blocks(i, end, kinds[i][:2], adapters[i:end], x, ctx, temb, kw)
      else:
        x, ctx = jax.tree.map(parallel.constrain_batch, block(  # rows stay on their devices (remat.scan)
            c, context_pre_only=kinds[i][0], dual_attention=kinds[i][1], **kw, attention=self.attention,
            name=f"transformer_blocks_{i}")(x, ctx, temb))

    scale, shift = Modulation(2, c.inner_dim, **kw, name="norm_out")(temb)
    x = _dense(self, p * p * c.out_channels, "proj_out")(modulate(layer_norm(x), shift, scale))
    x = x.reshape(b, height // p, width // p, p, p, c.out_channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c.out_channels)

  def _scan_blocks(self, start, end, kind, adapters, x, ctx, temb, kw):
    """Blocks start..end-1 (one kind, alike adapters) as a lax.scan over their params stacked on a leading axis."""
    params = self.variables["params"]
    module = JointTransformerBlock(self.config, context_pre_only=kind[0], dual_attention=kind[1], **kw,
                                   attention=self.attention, parent=None)
    return remat_lib.scan(module, [params[f"transformer_blocks_{k}"] for k in range(start, end)], adapters,
                          (x, ctx), lambda m, v, carry: m.apply(v, *carry, temb), self.remat)

  @classmethod
  def from_pretrained(cls, directory, dtype: Dtype = jnp.float32, param_dtype: Dtype | None = None):
    return from_pretrained(directory, dtype=dtype, param_dtype=param_dtype)


def dummy_inputs(config: MMDiTConfig, batch_size: int = 1, context_len: int = 1):
  """Zeros shaped like a forward call at the config's sample_size, e.g. for `init`/`eval_shape`."""
  s = config.sample_size
  return (jnp.zeros((batch_size, s, s, config.in_channels)),
      jnp.zeros((batch_size, context_len, config.joint_attention_dim)),
      jnp.zeros((batch_size, config.pooled_projection_dim)),
      jnp.zeros((batch_size,)))


# ------------------------------------------------------------------------------------- weight import

_LISTS = re.compile(r"^(transformer_blocks|to_out|net)_(\d+)$")  # torch nn.ModuleList members


def _torch_key(path: tuple[str, ...]) -> str:
  """('transformer_blocks_3', 'attn', 'to_out_0', 'kernel') -> 'transformer_blocks.3.attn.to_out.0.weight'."""
  leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
  return ".".join([_LISTS.sub(r"\1.\2", p) for p in path[:-1]] + [leaf])


@functools.cache
def param_shapes(config: MMDiTConfig) -> dict:
  """Abstract params pytree (jax.ShapeDtypeStruct leaves) of MMDiT(config)."""
  return jax.eval_shape(MMDiT(config).init, jax.random.key(0), *dummy_inputs(config))["params"]


def load_diffusers_params(state_dict: dict[str, np.ndarray], config: MMDiTConfig, dtype: Dtype | None = None):
  """diffusers SD3Transformer2DModel state dict -> MMDiT params (host numpy arrays, cast to `dtype` if given)."""
  shapes = traverse_util.flatten_dict(param_shapes(config))
  keys = {_torch_key(path): path for path in shapes}
  return traverse_util.unflatten_dict(hf_weights.to_params(state_dict, shapes, keys, what="SD3 transformer",
                                                           dtype=dtype))


def to_diffusers_state_dict(params) -> dict[str, np.ndarray]:
  """Inverse of `load_diffusers_params`."""
  return hf_weights.from_params(params, _torch_key)


def from_pretrained(directory, dtype: Dtype = jnp.float32, param_dtype: Dtype | None = None):
  """Load a diffusers SD3 transformer directory (config.json + diffusion_pytorch_model*.safetensors), e.g. the
  `transformer/` folder of stabilityai/stable-diffusion-3.5-medium. Returns (MMDiT module, host params)."""
  directory = os.fspath(directory)
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: put a diffusers SD3Transformer2DModel directory (config.json"
                f" + diffusion_pytorch_model*.safetensors, e.g. SD3.5-Medium's transformer/) at "
                f"{directory}")
  config = MMDiTConfig.from_json(config_path)
  param_dtype = param_dtype or dtype
  state = hf_weights.read_safetensors(directory, "diffusion_pytorch_model", "the SD3 transformer weights")
  params = load_diffusers_params(state, config, dtype=param_dtype)
  return MMDiT(config, dtype=dtype, param_dtype=param_dtype), params
