"""The emotion-conditioned generator: text encoder + (V, A) emotion tokens + MMDiT.

(V, A) enter as `num_emotion_tokens` learned tokens appended to the text context and as a
vector added to the pooled text embedding. Both output layers are zero-initialised and the
tokens are always present (zeros while untrained), so a generator pretrained before any
emotion training computes exactly the same function once emotion training starts.
`emotion_mask = 0` gives the emotion-free (unconditional) branch for classifier-free guidance.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from emojax.emotion.space import VA_MAX
from emojax.models import mmdit as mmdit_lib
from emojax.models import text_encoder as text_lib
from emojax.models.config_fields import known_fields


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  mmdit: mmdit_lib.MMDiTConfig
  text: text_lib.TextEncoderConfig
  num_emotion_tokens: int = 4
  emotion_hidden: int = 256
  max_text_length: int = 176

  def __post_init__(self):
    if self.mmdit.joint_attention_dim != self.text.hidden_size:
      raise ValueError(f"mmdit.joint_attention_dim={self.mmdit.joint_attention_dim} must equal text.hidden_size={self.text.hidden_size}")
    if self.mmdit.pooled_projection_dim != self.text.projection_dim:
      raise ValueError(f"mmdit.pooled_projection_dim={self.mmdit.pooled_projection_dim} must equal text.projection_dim={self.text.projection_dim}")

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["mmdit"] = self.mmdit.to_dict()
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
    d = dict(d)
    mm = mmdit_lib.MMDiTConfig.from_dict(d.pop("mmdit"))
    tx = text_lib.TextEncoderConfig.from_dict(d.pop("text"))
    return cls(mmdit=mm, text=tx, **known_fields(cls, d))


def preset(name: str, **mmdit_overrides) -> GeneratorConfig:
  if name not in mmdit_lib.PRESETS:
    raise ValueError(f"unknown generator preset {name!r}; choose from {sorted(mmdit_lib.PRESETS)}")
  mm = dataclasses.replace(mmdit_lib.PRESETS[name], **mmdit_overrides)
  tx = text_lib.PRESETS.get(name, text_lib.PRESETS["tiny"])
  return GeneratorConfig(mmdit=mm, text=tx)


def fourier_features(va: jax.Array, num_freqs: int = 8) -> jax.Array:
  """(B, 2) V-A in [-3, 3] -> (B, 2 + 4 * num_freqs) smooth features."""
  u = va / VA_MAX
  freqs = jnp.pi * 2.0 ** jnp.arange(num_freqs, dtype=jnp.float32) / 2.0
  ang = u[..., None] * freqs
  feats = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(va.shape[0], -1)
  return jnp.concatenate([u, feats], axis=-1)


class EmotionEmbed(nn.Module):
  """(B, 2) V-A -> (tokens (B, n, joint_dim), pooled offset (B, pooled_dim)); zero at init."""

  num_tokens: int
  token_dim: int
  pooled_dim: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, va):
    h = nn.Dense(self.hidden, dtype=self.dtype, name="linear_1")(fourier_features(va.astype(jnp.float32)))
    h = nn.Dense(self.hidden, dtype=self.dtype, name="linear_2")(nn.silu(h))
    h = nn.silu(h)
    zeros = nn.initializers.zeros
    tokens = nn.Dense(self.num_tokens * self.token_dim, dtype=self.dtype, kernel_init=zeros, name="to_tokens")(h)
    pooled = nn.Dense(self.pooled_dim, dtype=self.dtype, kernel_init=zeros, name="to_pooled")(h)
    return tokens.reshape(va.shape[0], self.num_tokens, self.token_dim), pooled


def append_emotion(text, emo_tokens, emo_pooled, emotion_mask=None):
  """text {context (B, L, D), pooled (B, P)} + EmotionEmbed's output -> conditioning with the V-A tokens
  appended to the context and the offset added to pooled; emotion_mask (B,) = 0 leaves them out (as zeros)."""
  if emotion_mask is not None:
    m = emotion_mask.astype(emo_tokens.dtype)
    emo_tokens, emo_pooled = emo_tokens * m[:, None, None], emo_pooled * m[:, None]
  context = jnp.concatenate([text["context"], emo_tokens.astype(text["context"].dtype)], axis=1)
  return {"context": context, "pooled": text["pooled"] + emo_pooled.astype(text["pooled"].dtype)}


class Generator(nn.Module):
  config: GeneratorConfig
  dtype: Any = jnp.float32
  remat: str = "none"  # the MMDiT's joint-block rematerialisation (emojax.models.remat)
  scan_layers: bool = False  # the MMDiT's identical joint blocks as one lax.scan (mmdit.MMDiT.scan_layers)
  attention: str = "auto"  # emojax.models.attention implementation of the text encoder and the MMDiT

  def setup(self):
    c = self.config
    self.text = text_lib.TextEncoder(c.text, dtype=self.dtype, attention=self.attention)
    self.emotion = EmotionEmbed(c.num_emotion_tokens, c.mmdit.joint_attention_dim, c.mmdit.pooled_projection_dim,
                                c.emotion_hidden, dtype=self.dtype)
    self.mmdit = mmdit_lib.MMDiT(c.mmdit, dtype=self.dtype, remat=self.remat, scan_layers=self.scan_layers,
                                 attention=self.attention)

  def encode(self, input_ids, va, emotion_mask=None):
    """Text ids (B, L) and V-A (B, 2) -> conditioning {context (B, L+n, D), pooled (B, P)}."""
    return self.add_emotion(self.encode_text(input_ids), va, emotion_mask)

  def encode_text(self, input_ids):
    tokens, pooled = self.text(input_ids)
    return {"context": tokens, "pooled": pooled}

  def add_emotion(self, text, va, emotion_mask=None):
    """Appends the V-A tokens to encoded text; emotion_mask (B,) = 0 gives the emotion-free branch."""
    return append_emotion(text, *self.emotion(va), emotion_mask)

  def velocity(self, x, sigma, cond):
    """x (B, H, W, C) at noise level sigma (B,) -> velocity; timestep convention sigma * 1000."""
    return self.mmdit(x, cond["context"], cond["pooled"], sigma * 1000.0)

  def __call__(self, x, sigma, input_ids, va):
    return self.velocity(x, sigma, self.encode(input_ids, va))


def init_params(gen: Generator, key: jax.Array, batch: int = 1):
  c = gen.config
  s = c.mmdit.sample_size
  x = jnp.zeros((batch, s, s, c.mmdit.in_channels), jnp.float32)
  ids = jnp.zeros((batch, c.max_text_length), jnp.int32)
  return gen.init(key, x, jnp.ones((batch,)), ids, jnp.zeros((batch, 2)))["params"]


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
