"""diffusers' AutoencoderKL in Flax: the SD3 / SD3.5 VAE (16 latent channels, no quant convs) and the
SD1 / SDXL one (quant and post-quant 1x1 convs) are configurations of it.

Encoder: conv_in, per level `layers_per_block` ResNet blocks (GroupNorm, SiLU, 3x3 conv, twice, with a
1x1 shortcut when the width changes) and, except at the last level, a stride-2 3x3 conv after padding
one zero row and column at the bottom and right (diffusers' Downsample2D with padding 0); a mid block
(ResNet, single-head self-attention over all positions with a GroupNorm in front and a residual,
ResNet); GroupNorm, SiLU, conv_out to 2 x latent channels (mean and log-variance). Decoder: conv_in,
the mid block, per level (widest first) `layers_per_block + 1` ResNet blocks and, except at the last
level, nearest 2x upsampling and a 3x3 conv; GroupNorm, SiLU, conv_out. All norms use eps 1e-6.

Images are NHWC floats in [-1, 1]; latents NHWC. The diffusion model sees
`to_diffusion_latents(z) = (z - shift_factor) * scaling_factor` and the pipeline decodes
`from_diffusion_latents(x) = x / scaling_factor + shift_factor`, as diffusers' SD3 pipelines do.
Module names follow diffusers' state-dict paths ("down_blocks.0.resnets.1.conv1" is
down_blocks_0/resnets_1/conv1), so `load_hf_vae_params` is a mechanical rename.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from emojax.io import hf_weights
from emojax.models import attention as attention_lib
from emojax.models.config_fields import known_fields

EPS = 1e-6  # every GroupNorm of the diffusers VAE (resnet_eps, the attention's and the out norms)
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  in_channels: int = 3
  out_channels: int = 3
  down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
  up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  act_fn: str = "silu"
  latent_channels: int = 16
  norm_num_groups: int = 32
  sample_size: int = 1024
  scaling_factor: float = 1.5305
  shift_factor: float | None = 0.0609
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  force_upcast: bool = True
  use_quant_conv: bool = False
  use_post_quant_conv: bool = False
  mid_block_add_attention: bool = True

  def __post_init__(self):
    n = len(self.block_out_channels)
    if set(self.down_block_types) != {"DownEncoderBlock2D"} or set(self.up_block_types) != {"UpDecoderBlock2D"}:
      raise ValueError(f"VAE blocks {self.down_block_types} / {self.up_block_types}: only DownEncoderBlock2D / "
                       "UpDecoderBlock2D (AutoencoderKL's) are supported")
    if len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(f"VAE has {n} block_out_channels but {len(self.down_block_types)} down and "
                       f"{len(self.up_block_types)} up blocks")
    if self.act_fn != "silu":
      raise ValueError(f"VAE act_fn {self.act_fn!r} not supported; AutoencoderKL checkpoints use 'silu'")
    if any(c % self.norm_num_groups for c in self.block_out_channels):
      raise ValueError(f"VAE block_out_channels {self.block_out_channels} do not divide into "
                       f"norm_num_groups={self.norm_num_groups}")

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any]) -> "VAEConfig":
    """A diffusers AutoencoderKL config.json dict (another `_class_name` is an error)."""
    name = d.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
      raise ValueError(f"VAE config is a {name}, not an AutoencoderKL (the SD3 pipeline's vae/)")
    kw = known_fields(cls, d)
    for k in ("down_block_types", "up_block_types", "block_out_channels", "latents_mean", "latents_std"):
      if kw.get(k) is not None:
        kw[k] = tuple(kw[k])
    return cls(**kw)


def _group_norm(cfg: VAEConfig, name: str | None = None) -> nn.GroupNorm:
  # use_fast_variance=False: E[(x - mean)^2] as torch, not E[x^2] - mean^2 (which loses digits in fp32)
  return nn.GroupNorm(num_groups=cfg.norm_num_groups, epsilon=EPS, use_fast_variance=False, name=name)


def _conv(features: int, kernel: int, name: str | None, dtype, stride: int = 1, padding=None) -> nn.Conv:
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=pad, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
  cfg: VAEConfig
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _conv(self.features, 3, "conv1", self.dtype)(nn.silu(_group_norm(self.cfg, "norm1")(x)))
    h = _conv(self.features, 3, "conv2", self.dtype)(nn.silu(_group_norm(self.cfg, "norm2")(h)))
    if x.shape[-1] != self.features:
      x = _conv(self.features, 1, "conv_shortcut", self.dtype)(x)
    return x + h


class Attention(nn.Module):
  """One head over all H*W positions (diffusers' VAE attention: heads = channels // attention_head_dim = 1)."""
  cfg: VAEConfig
  dtype: Any = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation

  def setup(self):
    c = self.cfg.block_out_channels[-1]
    self.group_norm = _group_norm(self.cfg)
    self.to_q, self.to_k, self.to_v = (nn.Dense(c, dtype=self.dtype) for _ in range(3))
    self.to_out = [nn.Dense(c, dtype=self.dtype)]

  def __call__(self, x):
    b, h, w, c = x.shape
    t = self.group_norm(x).reshape(b, h * w, c)
    q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
    att = attention_lib.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None],
                                              implementation=self.attention)[:, :, 0]
    return x + self.to_out[0](att).reshape(b, h, w, c)


class MidBlock(nn.Module):
  cfg: VAEConfig
  dtype: Any = jnp.float32
  attention: str = "auto"

  def setup(self):
    c = self.cfg.block_out_channels[-1]
    self.resnets = [ResnetBlock(self.cfg, c, self.dtype) for _ in range(2)]
    self.attentions = [Attention(self.cfg, self.dtype, self.attention)] if self.cfg.mid_block_add_attention else []

  def __call__(self, x):
    x = self.resnets[0](x)
    for att in self.attentions:
      x = att(x)
    return self.resnets[1](x)


class Downsample(nn.Module):
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.conv = _conv(self.features, 3, None, self.dtype, stride=2, padding=((0, 1), (0, 1)))

  def __call__(self, x):
    return self.conv(x)


class Upsample(nn.Module):
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.conv = _conv(self.features, 3, None, self.dtype)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))  # nearest


class Level(nn.Module):
  """DownEncoderBlock2D / UpDecoderBlock2D: ResNet blocks, then the level's resampler (if any)."""
  cfg: VAEConfig
  features: int
  num_layers: int
  resample: str | None  # "down", "up" or None
  dtype: Any = jnp.float32

  def setup(self):
    self.resnets = [ResnetBlock(self.cfg, self.features, self.dtype) for _ in range(self.num_layers)]
    if self.resample == "down":
      self.downsamplers = [Downsample(self.features, self.dtype)]
    elif self.resample == "up":
      self.upsamplers = [Upsample(self.features, self.dtype)]

  def __call__(self, x):
    for r in self.resnets:
      x = r(x)
    for s in getattr(self, "downsamplers", ()) or getattr(self, "upsamplers", ()):
      x = s(x)
    return x


class Encoder(nn.Module):
  cfg: VAEConfig
  dtype: Any = jnp.float32
  attention: str = "auto"

  def setup(self):
    c, ch = self.cfg, self.cfg.block_out_channels
    self.conv_in = _conv(ch[0], 3, None, self.dtype)
    self.down_blocks = [Level(c, w, c.layers_per_block, "down" if i < len(ch) - 1 else None, self.dtype)
                        for i, w in enumerate(ch)]
    self.mid_block = MidBlock(c, self.dtype, self.attention)
    self.conv_norm_out = _group_norm(c)
    self.conv_out = _conv(2 * c.latent_channels, 3, None, self.dtype)

  def __call__(self, x):
    x = self.conv_in(x)
    for block in self.down_blocks:
      x = block(x)
    return self.conv_out(nn.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
  cfg: VAEConfig
  dtype: Any = jnp.float32
  attention: str = "auto"

  def setup(self):
    c, ch = self.cfg, self.cfg.block_out_channels[::-1]
    self.conv_in = _conv(ch[0], 3, None, self.dtype)
    self.mid_block = MidBlock(c, self.dtype, self.attention)
    self.up_blocks = [Level(c, w, c.layers_per_block + 1, "up" if i < len(ch) - 1 else None, self.dtype)
                      for i, w in enumerate(ch)]
    self.conv_norm_out = _group_norm(c)
    self.conv_out = _conv(c.out_channels, 3, None, self.dtype)

  def __call__(self, z):
    x = self.mid_block(self.conv_in(z))
    for block in self.up_blocks:
      x = block(x)
    return self.conv_out(nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
  """`encode(images) -> (mean, logvar)` of the diagonal Gaussian posterior; `decode(z) -> images`."""
  config: VAEConfig
  dtype: Any = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation

  def setup(self):
    c = self.config
    self.encoder, self.decoder = Encoder(c, self.dtype, self.attention), Decoder(c, self.dtype, self.attention)
    if c.use_quant_conv:
      self.quant_conv = _conv(2 * c.latent_channels, 1, None, self.dtype)
    if c.use_post_quant_conv:
      self.post_quant_conv = _conv(c.latent_channels, 1, None, self.dtype)

  def encode(self, images):
    moments = self.encoder(images)
    if self.config.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, images):  # for init: every parameter
    mean, _ = self.encode(images)
    return self.decode(mean)


def sample_posterior(mean, logvar, rng):
  """diffusers' `latent_dist.sample()`: mean + exp(logvar / 2) * N(0, 1)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def to_diffusion_latents(z, config: VAEConfig):
  return (z - (config.shift_factor or 0.0)) * config.scaling_factor


def from_diffusion_latents(x, config: VAEConfig):
  return x / config.scaling_factor + (config.shift_factor or 0.0)


def to_unit_images(decoded):
  """Decoder output in [-1, 1] -> [0, 1], clipped (the image processor's denormalisation)."""
  return jnp.clip(decoded / 2 + 0.5, 0.0, 1.0)


# ----------------------------------------------------------------------------------- weights


def _flax_path(key: str) -> tuple[str, ...]:
  """'encoder.down_blocks.0.resnets.1.conv1.weight' -> ('encoder', 'down_blocks_0', 'resnets_1', 'conv1', 'weight')."""
  for old, new in _OLD_ATTENTION_NAMES.items():  # checkpoints saved before diffusers renamed its attention
    key = re.sub(rf"attentions\.(\d+)\.{old}\.", rf"attentions.\1.{new}.", key)
  return tuple(re.sub(r"\.(\d+)", r"_\1", key).split("."))


def load_hf_vae_params(state: dict[str, np.ndarray], config: VAEConfig) -> dict:
  """A diffusers AutoencoderKL state dict -> Flax params (checked against the module's own shapes)."""
  shapes = jax.eval_shape(lambda: AutoencoderKL(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, config.in_channels))))["params"]
  expected = traverse_util.flatten_dict(shapes)
  keys = {}
  for key, value in state.items():
    *mod, leaf = _flax_path(key)
    if np.ndim(value) in (2, 4):  # Linear / Conv2d weight
      path = (*mod, "kernel")
    elif leaf == "weight" and "norm" in mod[-1]:
      path = (*mod, "scale")
    else:
      path = (*mod, leaf)
    if path in expected:
      keys[key] = path
  params = hf_weights.to_params(state, expected, keys, what="AutoencoderKL (VAE)", dtype=np.float32)
  return traverse_util.unflatten_dict(params)


def read_config(directory) -> VAEConfig:
  path = os.path.join(os.fspath(directory), "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: put a diffusers AutoencoderKL directory (config.json + "
                            f"diffusion_pytorch_model.safetensors, a pipeline's vae/) at {directory}")
  with open(path) as f:
    return VAEConfig.from_hf_dict(json.load(f))


def from_pretrained(directory, dtype: Any = jnp.float32) -> tuple[AutoencoderKL, dict]:
  """A diffusers AutoencoderKL directory (e.g. SD3.5-Medium's vae/) -> (module, host params)."""
  config = read_config(directory)
  state = hf_weights.read_safetensors(os.fspath(directory), "diffusion_pytorch_model",
                                      "the VAE weights (diffusion_pytorch_model.safetensors)")
  return AutoencoderKL(config, dtype=dtype), load_hf_vae_params(state, config)
