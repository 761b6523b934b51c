"""CLIP (transformers' `CLIPModel`) in Flax: the preference model's architecture (PickScore is a
CLIP-H/14) and the metrics CLIP-Score and CLIP-IQA.

Text tower: `emojax.models.text_encoder.TextEncoder`, the one CLIP text transformer of emojax (the
tiny generator's text encoder and SD3's CLIP-L/G towers are configurations of it); here with one
token per id, the real tokenizer's ids and its pooling rule (`TextEncoderConfig.from_hf_dict`).
Vision tower (CLIPVisionTransformer): a patch convolution without bias, a learned class token,
learned position embeddings, the pre-layernorm ("pre_layrnorm", transformers' spelling), pre-LN
encoder layers (`text_encoder.EncoderLayer`, full attention), post-layernorm of the class token,
then `visual_projection`. `CLIP.__call__` returns what CLIPModel's forward does: L2-normalised
text_embeds and image_embeds and logits = exp(logit_scale) · cosine.

Images are NHWC float pixel_values as `emojax.io.clip_inputs` prepares them (CLIPImageProcessor's
resize, crop and normalisation); transformers' pixel_values are NCHW, the same numbers transposed.

Real weights: `from_pretrained(dir)` reads a transformers CLIP directory (config.json +
model.safetensors); `load_hf_clip_params` maps a state dict. Parity with transformers is tested
against goldens from tools/make_goldens_clip.py.
"""
from __future__ import annotations

import dataclasses
import functools
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
from emojax.models import text_encoder as te
from emojax.models.config_fields import known_fields

# transformers' CLIPVisionConfig defaults, for keys a config.json leaves out.
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                           num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  hidden_size: int = 768
  intermediate_size: int = 3072
  projection_dim: int = 512
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    if self.hidden_act not in te.ACTIVATIONS:
      raise ValueError(f"CLIP VisionConfig.hidden_act {self.hidden_act!r} not supported; known: {sorted(te.ACTIVATIONS)}")
    if self.image_size % self.patch_size:
      raise ValueError(f"CLIP image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  text: te.TextEncoderConfig
  vision: VisionConfig
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592  # ln(1 / 0.07), CLIP's initial temperature

  def __post_init__(self):
    if self.text.projection_dim != self.projection_dim or self.vision.projection_dim != self.projection_dim:
      raise ValueError(f"CLIP projection_dim {self.projection_dim} must equal the towers' (text "
                       f"{self.text.projection_dim}, vision {self.vision.projection_dim})")
    if self.text.merge_size != 1 or self.text.word_merge:
      raise ValueError("a CLIP text tower reads one token per id (merge_size 1, word_merge 0)")

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
    """A transformers CLIPConfig dict (config.json of a CLIPModel directory). One-line error otherwise."""
    if "text_config" not in d or "vision_config" not in d:
      raise ValueError(f"not a CLIPModel config (model_type {d.get('model_type')!r}): it needs text_config and "
                       "vision_config")
    projection_dim = d.get("projection_dim", 512)
    vision = {**_HF_VISION_DEFAULTS, **{k: v for k, v in (d["vision_config"] or {}).items()
                                        if k in {f.name for f in dataclasses.fields(VisionConfig)}}}
    vision["projection_dim"] = projection_dim  # CLIPModel's visual_projection uses the top-level dim
    return cls(text=te.TextEncoderConfig.from_hf_dict(d), vision=VisionConfig(**vision), projection_dim=projection_dim,
               logit_scale_init_value=d.get("logit_scale_init_value", 2.6592))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
    d = dict(d)
    text, vision = te.TextEncoderConfig.from_dict(d.pop("text")), VisionConfig(**known_fields(VisionConfig, d.pop("vision")))
    return cls(text=text, vision=vision, **known_fields(cls, d))


class VisionTower(nn.Module):
  """pixel_values (B, H, W, C) -> (last_hidden_state (B, 1 + patches, D), image_embeds (B, projection_dim))."""

  config: VisionConfig
  dtype: Any = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation

  @nn.compact
  def __call__(self, pixel_values):
    c = self.config
    b, h, w, _ = pixel_values.shape
    if (h, w) != (c.image_size, c.image_size):
      raise ValueError(f"CLIP vision tower takes {c.image_size}x{c.image_size} images, got {h}x{w} "
                       "(prepare them with emojax.io.clip_inputs)")
    p = c.patch_size
    x = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                name="patch_embedding")(pixel_values.astype(self.dtype))
    x = x.reshape(b, -1, c.hidden_size)
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.hidden_size,))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, c.hidden_size)), x], 1)
    x = x + nn.Embed(c.num_patches + 1, c.hidden_size, name="position_embedding")(jnp.arange(c.num_patches + 1))
    ln = lambda name: nn.LayerNorm(c.layer_norm_eps, dtype=jnp.float32, name=name)
    x = ln("pre_layrnorm")(x)
    for i in range(c.num_hidden_layers):
      x = te.EncoderLayer(c, self.dtype, self.attention, name=f"layers_{i}")(x)
    pooled = ln("post_layernorm")(x[:, 0])
    return x, nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype, name="visual_projection")(pooled)


def _normalize(x):
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIP(nn.Module):
  """transformers' CLIPModel: params {"text": TextEncoder, "vision": VisionTower, "logit_scale": ()}."""

  config: CLIPConfig
  dtype: Any = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation of both towers

  def setup(self):
    c = self.config
    self.text = te.TextEncoder(c.text, dtype=self.dtype, attention=self.attention)
    self.vision = VisionTower(c.vision, dtype=self.dtype, attention=self.attention)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init_value), ())

  def text_embeds(self, input_ids, attention_mask=None):
    """L2-normalised projected text features (B, projection_dim), fp32."""
    return _normalize(self.text(input_ids, attention_mask)[1])

  def image_embeds(self, pixel_values):
    """L2-normalised projected image features (N, projection_dim), fp32."""
    return _normalize(self.vision(pixel_values)[1])

  def __call__(self, input_ids, attention_mask, pixel_values):
    text, image = self.text_embeds(input_ids, attention_mask), self.image_embeds(pixel_values)
    logits_per_image = jnp.exp(self.logit_scale) * image @ text.T
    return {"text_embeds": text, "image_embeds": image, "logits_per_image": logits_per_image,
            "logits_per_text": logits_per_image.T}


# ------------------------------------------------------------------------------------- weight import

_IGNORED_HF_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")  # old buffers


@functools.cache
def param_shapes(config: CLIPConfig) -> dict:
  """Abstract params pytree (ShapeDtypeStruct leaves) of CLIP(config)."""
  v = config.vision
  ids = jnp.zeros((1, 2), jnp.int32)
  pixels = jnp.zeros((1, v.image_size, v.image_size, v.num_channels))
  return jax.eval_shape(CLIP(config).init, jax.random.key(0), ids, None, pixels)["params"]


def _hf_key(path: tuple[str, ...]) -> str:
  """emojax CLIP param path -> transformers CLIPModel state-dict key."""
  if path == ("logit_scale",):
    return "logit_scale"
  tower, *rest = path
  if tower == "text":
    return te._hf_key(tuple(rest))
  *mods, leaf = rest
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
  if mods == ["visual_projection"]:
    return f"visual_projection.{leaf}"
  if not mods:  # class_embedding: a bare parameter
    return f"vision_model.embeddings.{leaf}"
  if mods[0] in ("patch_embedding", "position_embedding"):
    return f"vision_model.embeddings.{mods[0]}.{leaf}"
  if mods[0] in ("pre_layrnorm", "post_layernorm"):
    return f"vision_model.{mods[0]}.{leaf}"
  m = re.fullmatch(r"layers_(\d+)", mods[0])
  if m is None:
    raise ValueError(f"no transformers CLIP key for emojax param {'/'.join(path)}")
  sub = mods[1:]
  if sub[0] in ("fc1", "fc2"):
    sub = ["mlp"] + sub
  return ".".join(["vision_model.encoder.layers", m.group(1), *sub, leaf])


def load_hf_clip_params(state_dict: dict[str, np.ndarray], config: CLIPConfig, dtype: Any = np.float32) -> dict:
  """transformers CLIPModel state dict -> CLIP params (host numpy). One-line errors naming missing,
  unexpected or mis-shaped keys."""
  shapes = traverse_util.flatten_dict(param_shapes(config))
  keys = {_hf_key(path): path for path in shapes}
  params = hf_weights.to_params(state_dict, shapes, keys, what="CLIP", ignored=_IGNORED_HF_KEYS, dtype=dtype)
  return traverse_util.unflatten_dict(params)


def init_params(config: CLIPConfig, rng, std: float = 0.02) -> dict:
  """Random weights for training from scratch: kernels, embeddings and the class token N(0, std²), norm
  scales 1, biases 0, logit_scale at logit_scale_init_value. Built from param_shapes (nothing compiled)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(config))
  keys = jax.random.split(rng, len(leaves))
  out = []
  for key, (path, s) in zip(keys, leaves):
    name = path[-1].key
    if name == "logit_scale":
      out.append(jnp.full(s.shape, config.logit_scale_init_value, s.dtype))
    elif name in ("scale", "bias"):
      out.append(jnp.full(s.shape, float(name == "scale"), s.dtype))
    else:
      out.append(std * jax.random.normal(key, s.shape, s.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def to_hf_state_dict(params) -> dict[str, np.ndarray]:
  """Inverse of `load_hf_clip_params`: transformers CLIPModel key -> array (Linear (out, in), Conv2d OIHW)."""
  return hf_weights.from_params(params, _hf_key)


def hf_config_dict(config: CLIPConfig, special_ids: dict[str, int] | None = None) -> dict[str, Any]:
  """A transformers CLIPConfig dict (config.json) for `config`; `CLIPConfig.from_hf_dict` inverts it.
  special_ids: the tokenizer's bos/pad ids ({"bos_token_id": .., "pad_token_id": ..}) for the text config,
  where transformers' defaults (OpenAI's vocabulary) would not fit a smaller one."""
  t, v = config.text, config.vision
  if t.output_layer != -1:
    raise ValueError("a CLIPModel's text tower outputs its last layer (output_layer -1)")
  text = {k: getattr(t, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
                                     "eos_token_id")}
  text |= dict(special_ids or {})
  if (t.pooling == "argmax_ids") != (t.eos_token_id == 2):
    raise ValueError(f"transformers pools at argmax(ids) exactly when eos_token_id == 2; pooling {t.pooling!r} "
                     f"with eos_token_id {t.eos_token_id} has no transformers config")
  vision = {k: getattr(v, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                       "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps")}
  return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.projection_dim,
          "logit_scale_init_value": config.logit_scale_init_value, "text_config": {**text, "model_type": "clip_text_model"},
          "vision_config": {**vision, "model_type": "clip_vision_model"}}


def save_pretrained(directory: str, config: CLIPConfig, params, special_ids: dict[str, int] | None = None) -> None:
  """config.json + model.safetensors in transformers' CLIPModel layout (float32)."""
  state = {k: v.astype(np.float32) for k, v in to_hf_state_dict(params).items()}
  hf_weights.write_pretrained(directory, "model", state, hf_config_dict(config, special_ids))


def read_config(directory) -> CLIPConfig:
  path = os.path.join(os.fspath(directory), "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: put a transformers CLIP directory (config.json + model.safetensors "
                            f"+ tokenizer files) at {directory}")
  with open(path) as f:
    return CLIPConfig.from_hf_dict(json.load(f))


def from_pretrained(directory, dtype: Any = jnp.float32) -> tuple[CLIP, dict]:
  """A transformers CLIPModel directory (config.json + model.safetensors, or a sharded index), e.g.
  PickScore_v1 -> (CLIP module, host params). Nothing is downloaded."""
  config = read_config(directory)
  state = hf_weights.read_safetensors(os.fspath(directory), "model", "the CLIP weights (model.safetensors)")
  return CLIP(config, dtype=dtype), load_hf_clip_params(state, config)
