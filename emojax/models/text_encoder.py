"""CLIP text transformer (the architecture of SD3's CLIP-L/G text towers) in Flax.

Config fields and module names follow transformers' `CLIPTextConfig` /
`CLIPTextModelWithProjection`, so real CLIP weights map onto it mechanically. The tiny world
uses it with the byte-level tokenizer and merges bytes into tokens before the layers, so the
MMDiT context stays short: `word_merge` k > 0 gives one token per space-separated word (the
first k byte embeddings of the word, concatenated and projected), which is what CLIP's BPE
roughly gives a real tower; a word is then the same token wherever it sits in the prompt. The
fixed `merge_size` k > 1 (every run of k bytes -> one token) cuts words at arbitrary places
and trained far worse: the tiny generator learnt to ignore its text. Neither merge (k = 1,
word_merge = 0) is exactly CLIP. Outputs follow SD3's use of the tower: per-token
states from the layer `output_layer` (SD3 takes the penultimate, -2) and a pooled vector =
text_projection(final_layer_norm(last state at the EOS position)).

Pooling follows transformers' `CLIPTextTransformer` exactly: with `pooling="first_eos"` the
pooled row is the first position whose id equals `eos_token_id`; `pooling="argmax_ids"` is
transformers' legacy rule for configs with `eos_token_id == 2` (OpenAI CLIP-L, SD3's towers),
which pools at argmax(input_ids) (the first occurrence of the largest id, i.e. CLIP's
<|endoftext|> = 49407 with the real vocabulary). `TextEncoderConfig.from_hf_dict` picks the rule
transformers would; the byte-level tiny world (EOS id 2, not the largest id) uses "first_eos".

Real weights: `from_pretrained(dir)` reads a transformers CLIPTextModelWithProjection (or full
CLIPModel) directory, config.json + model.safetensors; `load_hf_clip_text_params` maps a
state dict. Parity with transformers is tested against goldens from
tools/make_goldens_clip_text.py.
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
from emojax.models import attention as attention_lib
from emojax.models.config_fields import known_fields
from emojax.io.tokenizers import BOS_ID, EOS_ID, PAD_ID, byte_id


# transformers' ACT2FN: "gelu" is the exact erf form; the tanh approximation is "gelu_new"/"gelu_pytorch_tanh".
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
}

# transformers' CLIPTextConfig defaults, for keys a config.json leaves out.
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, projection_dim=512,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  vocab_size: int = 259
  hidden_size: int = 128
  intermediate_size: int = 512
  num_hidden_layers: int = 3
  num_attention_heads: int = 4
  max_position_embeddings: int = 64
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int = 128
  eos_token_id: int = 2
  output_layer: int = -1  # which hidden state SD3 feeds the MMDiT: -1 last (normed), -2 penultimate
  merge_size: int = 1  # >1: merge this many byte embeddings into one token before the layers
  word_merge: int = 0  # >0: one token per space-separated word of byte ids, keeping its first this-many bytes
  pooling: str = "first_eos"  # "first_eos" | "argmax_ids" (transformers' legacy rule when eos_token_id == 2)

  def __post_init__(self):
    if self.pooling not in ("first_eos", "argmax_ids"):
      raise ValueError(f"TextEncoderConfig.pooling must be 'first_eos' or 'argmax_ids', got {self.pooling!r}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"TextEncoderConfig.hidden_act {self.hidden_act!r} not supported; known: {sorted(ACTIVATIONS)}")

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TextEncoderConfig":
    return cls(**known_fields(cls, d))

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "TextEncoderConfig":
    """transformers CLIPTextConfig dict (or a full CLIPConfig dict with `text_config`) -> config.

    Keys the dataclass does not have (architectures, torch_dtype, bos/pad ids, dropout...) are
    ignored. Pooling is set as transformers' CLIPTextTransformer would pool for that eos id.
    """
    if "text_config" in d:
      text = dict(d["text_config"] or {})
      if "projection_dim" in d:  # CLIPModel's text_projection uses the top-level projection_dim
        text["projection_dim"] = d["projection_dim"]
      d = text
    names = {f.name for f in dataclasses.fields(cls)} - {"output_layer", "merge_size", "word_merge", "pooling"}
    kw = {**_HF_TEXT_DEFAULTS, **{k: v for k, v in d.items() if k in names}}
    kw["pooling"] = "argmax_ids" if kw["eos_token_id"] == 2 else "first_eos"
    kw.update(overrides)
    return cls(**kw)


PRESETS = {
    # one token per word (as CLIP's BPE roughly gives): a 176-byte prompt becomes <= 44 context tokens
    "tiny": TextEncoderConfig(max_position_embeddings=44, word_merge=12),
}


def word_slots(input_ids, max_bytes: int):
  """Byte ids (B, n) -> (word index, place in word) per byte, for the tiny world's word merge.

  BOS and EOS are words of their own, spaces separate words and belong to none; spaces,
  padding and bytes past `max_bytes` of a word get an out-of-range place, so they are dropped.
  Words past the token slots are dropped too (the scatter's mode="drop").
  """
  space = input_ids == byte_id(" ")
  special = (input_ids == BOS_ID) | (input_ids == EOS_ID)
  prev = jnp.pad(input_ids, ((0, 0), (1, 0)), constant_values=byte_id(" "))[:, :-1]
  prev_breaks = (prev == byte_id(" ")) | (prev == BOS_ID)
  start = ~space & (input_ids != PAD_ID) & (special | prev_breaks)
  slot = jnp.cumsum(start, axis=1) - 1
  pos = jnp.arange(input_ids.shape[1])
  first = jax.lax.cummax(jnp.where(start, pos, 0), axis=1)
  offset = pos - first
  keep = ~space & (input_ids != PAD_ID) & (offset < max_bytes)
  return slot, jnp.where(keep, offset, max_bytes)


class _Attention(nn.Module):
  cfg: Any  # TextEncoderConfig or clip.VisionConfig: hidden_size, num_attention_heads
  dtype: Any
  attention: str = "auto"  # emojax.models.attention implementation

  @nn.compact
  def __call__(self, x, causal=False, key_mask=None):
    c = self.cfg
    dense = lambda name: nn.Dense(c.hidden_size, dtype=self.dtype, name=name)
    b, l, _ = x.shape
    split = lambda t: t.reshape(b, l, c.num_attention_heads, -1)
    q, k, v = (split(dense(n)(x)) for n in ("q_proj", "k_proj", "v_proj"))
    out = attention_lib.dot_product_attention(q, k, v, causal=causal, key_mask=key_mask,
                                              implementation=self.attention)
    return dense("out_proj")(out.reshape(b, l, c.hidden_size))


class EncoderLayer(nn.Module):
  """transformers' CLIPEncoderLayer (pre-LN attention + MLP), shared by the text and vision towers."""
  cfg: Any  # TextEncoderConfig or clip.VisionConfig
  dtype: Any
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, causal=False, key_mask=None):
    c = self.cfg
    ln = lambda name: nn.LayerNorm(c.layer_norm_eps, dtype=jnp.float32, name=name)
    x = x + _Attention(c, self.dtype, self.attention, name="self_attn")(ln("layer_norm1")(x), causal, key_mask)
    h = nn.Dense(c.intermediate_size, dtype=self.dtype, name="fc1")(ln("layer_norm2")(x))
    return x + nn.Dense(c.hidden_size, dtype=self.dtype, name="fc2")(ACTIVATIONS[c.hidden_act](h))


class TextEncoder(nn.Module):
  """input_ids (B, L) int32 [, attention_mask (B, L)] -> (token_states (B, L, hidden), pooled
  (B, projection_dim)). The attention mask (1 = real token) hides padding keys as transformers does;
  it changes no state before the EOS, so pooled is the same with or without it."""

  config: TextEncoderConfig
  dtype: Any = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    c = self.config
    b, n = input_ids.shape
    k = c.merge_size
    if c.word_merge:
      l, k = c.max_position_embeddings, c.word_merge
      slot, offset = word_slots(input_ids, k)
    else:
      if n % k:
        raise ValueError(f"text length {n} is not a multiple of merge_size={k}")
      l = n // k
      if l > c.max_position_embeddings:
        raise ValueError(f"text of {n} ids ({l} tokens) exceeds max_position_embeddings={c.max_position_embeddings}")
    x = nn.Embed(c.vocab_size, c.hidden_size, name="token_embedding")(input_ids)
    if c.word_merge:  # scatter each kept byte to (its word, its place in the word); the rest are dropped
      rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, n))
      x = jnp.zeros((b, l, k, c.hidden_size), x.dtype).at[rows, slot, offset].set(x, mode="drop")
    if k > 1:
      x = nn.Dense(c.hidden_size, dtype=self.dtype, name="merge")(x.reshape(b, l, k * c.hidden_size))
    x = x + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embedding")(jnp.arange(l))
    key_mask = None
    if attention_mask is not None:
      if k > 1 or c.word_merge:
        raise ValueError("attention_mask needs one token per id (merge_size 1, word_merge 0)")
      key_mask = attention_mask > 0
    states = [x]
    for i in range(c.num_hidden_layers):
      x = EncoderLayer(c, self.dtype, self.attention, name=f"layers_{i}")(x, True, key_mask)
      states.append(x)
    final = nn.LayerNorm(c.layer_norm_eps, dtype=jnp.float32, name="final_layer_norm")(x)
    tokens = final if c.output_layer == -1 else states[c.output_layer]
    hit = input_ids if c.pooling == "argmax_ids" else input_ids == c.eos_token_id
    eos_pos = jnp.argmax(hit, axis=-1)  # first maximum, as torch.argmax
    eos_pos = slot[jnp.arange(b), eos_pos] if c.word_merge else eos_pos // k
    pooled = final[jnp.arange(b), eos_pos]
    pooled = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype, name="text_projection")(pooled)
    return tokens, pooled

  @classmethod
  def from_pretrained(cls, directory, dtype: Any = jnp.float32, **overrides):
    return from_pretrained(directory, dtype=dtype, **overrides)


# ----------------------------------------------------------------------------------------------
# transformers weight import

_IGNORED_HF_KEYS = ("text_model.embeddings.position_ids",)  # a buffer older checkpoints saved


@functools.cache
def param_shapes(config: TextEncoderConfig) -> dict:
  """Abstract params pytree (ShapeDtypeStruct leaves) of TextEncoder(config)."""
  ids = jnp.zeros((1, config.word_merge or config.merge_size), jnp.int32)
  return jax.eval_shape(TextEncoder(config).init, jax.random.key(0), ids)["params"]


def _hf_key(path: tuple[str, ...]) -> str:
  """('layers_3', 'fc1', 'kernel') -> 'text_model.encoder.layers.3.mlp.fc1.weight'."""
  *mods, leaf = path
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
  if mods == ["text_projection"]:
    return f"text_projection.{leaf}"
  if mods[0] in ("token_embedding", "position_embedding"):
    return f"text_model.embeddings.{mods[0]}.{leaf}"
  if mods[0] == "final_layer_norm":
    return f"text_model.final_layer_norm.{leaf}"
  m = re.fullmatch(r"layers_(\d+)", mods[0])
  if m is None:
    raise ValueError(f"no transformers CLIP key for emojax param {'/'.join(path)}")
  rest = mods[1:]
  if rest[0] in ("fc1", "fc2"):
    rest = ["mlp"] + rest
  return ".".join(["text_model.encoder.layers", m.group(1), *rest, leaf])


def load_hf_clip_text_params(state_dict: dict[str, np.ndarray], config: TextEncoderConfig,
                             dtype: Any = np.float32) -> dict:
  """transformers CLIPTextModelWithProjection state dict -> TextEncoder params (host numpy).

  Linear weights (out, in) become Dense kernels (in, out); LayerNorm weight -> scale. Raises
  ValueError naming missing/unexpected keys or mismatched shapes.
  """
  if config.merge_size != 1 or config.word_merge:
    raise ValueError(f"transformers CLIP has no byte merge; load_hf_clip_text_params needs merge_size=1, got "
                     f"{config.merge_size}")
  shapes = traverse_util.flatten_dict(param_shapes(config))
  keys = {_hf_key(path): path for path in shapes}
  params = hf_weights.to_params(state_dict, shapes, keys, what="CLIP text", ignored=_IGNORED_HF_KEYS, dtype=dtype)
  return traverse_util.unflatten_dict(params)


def from_pretrained(directory, dtype: Any = jnp.float32, **overrides):
  """transformers CLIPTextModelWithProjection / CLIPModel directory (config.json + model.safetensors, or a
  sharded index) -> (TextEncoder, params). `overrides` replace config fields, e.g. output_layer=-2 as SD3 uses."""
  directory = os.fspath(directory)
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: expected a transformers CLIP text model directory")
  with open(config_path) as f:
    d = json.load(f)
  config = TextEncoderConfig.from_hf_dict(d, **overrides)
  state = hf_weights.read_safetensors(directory, "model", "the CLIP text encoder weights (model.safetensors)")
  if "text_config" in d:  # full CLIPModel: drop the vision tower and logit scale
    state = {k: v for k, v in state.items() if k.startswith("text_model.") or k == "text_projection.weight"}
  return TextEncoder(config, dtype=dtype), load_hf_clip_text_params(state, config)
