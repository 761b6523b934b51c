"""T5 encoder (transformers' `T5EncoderModel`, SD3's `text_encoder_3`: T5 v1.1 XXL) in Flax.

Architecture facts, as transformers computes them:
- token embedding `shared`, no position embeddings; no scaling of the embeddings.
- pre-norm residual blocks: x + SelfAttention(norm(x)), then x + FFN(norm(x)); a final norm after the last block.
- every norm is T5's RMS norm: weight * x / sqrt(mean(x²) + eps), no mean subtraction, no bias, variance in fp32.
- attention: q/k/v/o without bias, inner width num_heads * d_kv (need not equal d_model), NO 1/sqrt(d_kv)
  scaling (T5 folds it into the init); the scores get a learnt relative position bias, one value per
  (bucket, head), whose embedding lives in block 0 only and is added by every block; padding keys get
  finfo(float32).min added. Buckets are bidirectional: half the buckets per direction, the first half of
  those exact distances, the rest log-spaced up to max_distance, beyond which all share the last bucket.
- FFN: `feed_forward_proj` "gated-gelu" (v1.1, SD3): wo(gelu_tanh(wi_0 x) * wi_1 x); "gated-silu" the same
  with silu; "relu" (original T5): wo(relu(wi x)). No biases.
Inference only: no dropout.

Real weights: `from_pretrained(dir)` reads a transformers T5 directory (config.json + model.safetensors or a
sharded index); `load_hf_t5_params` maps a state dict. Parity with transformers is tested against goldens from
tools/make_goldens_t5.py.
"""
from __future__ import annotations

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

from emojax.io import hf_weights
from emojax.models import attention as attention_lib
from emojax.models.config_fields import known_fields

# feed_forward_proj -> (gated, activation); transformers maps "gated-gelu" to gelu_new (the tanh approximation).
FEED_FORWARD = {
    "relu": (False, jax.nn.relu),
    "gated-gelu": (True, functools.partial(jax.nn.gelu, approximate=True)),
    "gated-silu": (True, jax.nn.silu),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The encoder's fields of transformers' T5Config, with its defaults (t5-small)."""
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"

  def __post_init__(self):
    if self.feed_forward_proj not in FEED_FORWARD:
      raise ValueError(f"T5Config.feed_forward_proj {self.feed_forward_proj!r} not supported; known: "
                       f"{sorted(FEED_FORWARD)}")

  @property
  def is_gated_act(self) -> bool:
    return FEED_FORWARD[self.feed_forward_proj][0]

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "T5Config":
    return cls(**known_fields(cls, d))

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any]) -> "T5Config":
    """A transformers T5Config dict (config.json of a T5EncoderModel / T5ForConditionalGeneration directory).
    Only the encoder's fields are read (a T5 config.json carries many others); absent ones take transformers'
    defaults."""
    model_type = d.get("model_type", "t5")
    if model_type != "t5":
      raise ValueError(f"not a T5 config: model_type {model_type!r} (expected 't5')")
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{k: d[k] for k in names if k in d})


def relative_position_bucket(relative_position, num_buckets: int = 32, max_distance: int = 128):
  """Bidirectional T5 bucket of each relative position (key - query), int32 in [0, num_buckets)."""
  half = num_buckets // 2  # positions > 0 (keys after the query) use the upper half
  max_exact = half // 2
  n = jnp.abs(relative_position)
  # Same float32 ops in the same order as transformers, so the truncation lands on the same side at bucket
  # edges; n >= 1 keeps log(0) out (the exact branch covers n = 0 anyway).
  log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
  large = jnp.minimum(max_exact + (log_ratio * (half - max_exact)).astype(jnp.int32), half - 1)
  return jnp.where(relative_position > 0, half, 0) + jnp.where(n < max_exact, n, large)


class LayerNorm(nn.Module):
  """transformers' T5LayerNorm (RMS norm, fp32 statistics)."""
  epsilon: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (scale * x).astype(self.dtype)


class Attention(nn.Module):
  """T5Attention (encoder self-attention). Returns (output, position_bias (1, H, L, L)) so later blocks reuse
  block 0's bias."""
  config: T5Config
  has_relative_attention_bias: bool = False
  dtype: Any = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation (the position bias goes in as `bias`)

  @nn.compact
  def __call__(self, x, key_mask, position_bias=None):
    c = self.config
    b, l, _ = x.shape
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype, name=name)
    q, k, v = (dense(c.inner_dim, n)(x).reshape(b, l, c.num_heads, c.d_kv) for n in "qkv")
    if position_bias is None:
      if not self.has_relative_attention_bias:
        raise ValueError("a T5 block without relative_attention_bias needs block 0's position_bias")
      pos = jnp.arange(l)
      buckets = relative_position_bucket(pos[None, :] - pos[:, None], c.relative_attention_num_buckets,
                                         c.relative_attention_max_distance)
      table = nn.Embed(c.relative_attention_num_buckets, c.num_heads, name="relative_attention_bias")
      position_bias = table(buckets).astype(jnp.float32).transpose(2, 0, 1)[None]
    out = attention_lib.dot_product_attention(q, k, v, bias=position_bias, key_mask=key_mask, scale=1.0,
                                              implementation=self.attention).reshape(b, l, c.inner_dim)
    return dense(c.d_model, "o")(out), position_bias


class FeedForward(nn.Module):
  """T5DenseGatedActDense / T5DenseActDense (transformers' `DenseReluDense`, whatever the activation)."""
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    gated, act = FEED_FORWARD[c.feed_forward_proj]
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype, name=name)
    h = act(dense(c.d_ff, "wi_0")(x)) * dense(c.d_ff, "wi_1")(x) if gated else act(dense(c.d_ff, "wi")(x))
    return dense(c.d_model, "wo")(h)


class Block(nn.Module):
  config: T5Config
  has_relative_attention_bias: bool = False
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, key_mask, position_bias=None):
    c = self.config
    h, position_bias = Attention(c, self.has_relative_attention_bias, self.dtype, self.attention,
                                 name="SelfAttention")(
        LayerNorm(c.layer_norm_epsilon, self.dtype, name="attention_norm")(x), key_mask, position_bias)
    x = x + h
    x = x + FeedForward(c, self.dtype, name="DenseReluDense")(LayerNorm(c.layer_norm_epsilon, self.dtype,
                                                                        name="ff_norm")(x))
    return x, position_bias


class T5Encoder(nn.Module):
  """input_ids (B, L) int [, attention_mask (B, L), 1 = real token] -> last_hidden_state (B, L, d_model).
  Padded positions are computed too (they attend to the real tokens), as transformers does."""
  config: T5Config
  dtype: Any = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    c = self.config
    x = nn.Embed(c.vocab_size, c.d_model, name="shared")(input_ids).astype(self.dtype)
    key_mask = None if attention_mask is None else attention_mask > 0
    position_bias = None
    for i in range(c.num_layers):
      x, position_bias = Block(c, i == 0, self.dtype, self.attention, name=f"block_{i}")(x, key_mask, position_bias)
    return LayerNorm(c.layer_norm_epsilon, self.dtype, name="final_layer_norm")(x)


# ------------------------------------------------------------------------------------- weight import

_IGNORED_HF_PREFIXES = ("decoder.", "lm_head.")  # a full T5ForConditionalGeneration file
_EMBED_KEYS = ("shared.weight", "encoder.embed_tokens.weight")  # tied: either (or both) may be stored


@functools.cache
def param_shapes(config: T5Config) -> dict:
  """Abstract params pytree (ShapeDtypeStruct leaves) of T5Encoder(config)."""
  return jax.eval_shape(T5Encoder(config).init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]


def _hf_key(path: tuple[str, ...]) -> str:
  """('block_3', 'DenseReluDense', 'wi_0', 'kernel') -> 'encoder.block.3.layer.1.DenseReluDense.wi_0.weight'."""
  *mods, _ = path
  if mods == ["shared"]:
    return "shared.weight"
  if mods == ["final_layer_norm"]:
    return "encoder.final_layer_norm.weight"
  m = re.fullmatch(r"block_(\d+)", mods[0])
  if m is None:
    raise ValueError(f"no transformers T5 key for emojax param {'/'.join(path)}")
  sub = {"attention_norm": ["layer.0.layer_norm"], "SelfAttention": ["layer.0.SelfAttention"],
         "ff_norm": ["layer.1.layer_norm"], "DenseReluDense": ["layer.1.DenseReluDense"]}[mods[1]]
  return ".".join(["encoder.block", m.group(1), *sub, *mods[2:], "weight"])


def load_hf_t5_params(state: dict[str, np.ndarray], config: T5Config, dtype: Any = np.float32) -> dict:
  """transformers T5EncoderModel (or T5ForConditionalGeneration: decoder.* / lm_head.* are ignored) state dict
  -> T5Encoder params (host numpy). Linear (out, in) -> Dense kernel (in, out). One-line ValueError naming
  missing, unexpected or mis-shaped keys."""
  state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_HF_PREFIXES)}
  embed = next((k for k in _EMBED_KEYS if k in state), _EMBED_KEYS[0])
  shapes = traverse_util.flatten_dict(param_shapes(config))
  keys = {(embed if path == ("shared", "embedding") else _hf_key(path)): path for path in shapes}
  params = hf_weights.to_params(state, shapes, keys, what="T5 encoder", ignored=_EMBED_KEYS, dtype=dtype)
  return traverse_util.unflatten_dict(params)


def read_config(directory) -> T5Config:
  path = os.path.join(os.fspath(directory), "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: put a transformers T5 encoder directory (config.json + "
                            f"model.safetensors), e.g. SD3's text_encoder_3, at {directory}")
  with open(path) as f:
    return T5Config.from_hf_dict(json.load(f))


def from_pretrained(directory, dtype: Any = jnp.float32) -> tuple[T5Encoder, dict]:
  """A transformers T5EncoderModel directory (config.json + model.safetensors, or a sharded index), e.g. SD3's
  text_encoder_3 -> (T5Encoder module, host float32 params). Nothing is downloaded."""
  config = read_config(directory)
  state = hf_weights.read_safetensors(os.fspath(directory), "model", "the T5 encoder weights (model.safetensors)")
  return T5Encoder(config, dtype=dtype), load_hf_t5_params(state, config)
