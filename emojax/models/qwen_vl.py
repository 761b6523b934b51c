"""Qwen2.5-VL (the paper's emotion-understanding LVLM) in Flax linen: transformers'
`Qwen2_5_VLForConditionalGeneration`, images only (no video).

Vision tower. `pixel_values` is what the HF processor emits: (num_patches, C*T*P*P) rows, each a
flattened (C, temporal_patch_size, P, P) patch, patches ordered block-major over
spatial_merge_size x spatial_merge_size blocks. The Conv3d patch embedding (stride = kernel) is one
matmul. Each block is RMSNorm -> attention with a 2-D rotary embedding (first half of the rotated
dims from the patch row, second half from its column) -> RMSNorm -> gated SiLU MLP with biases.
Tokens are permuted into window order (windows of window_size pixels over the merged grid) before
the blocks; blocks in `fullatt_block_indexes` attend within each image frame, the rest within a
window. transformers splits the packed sequence by cu_seqlens; here a segment-id mask does the
same with static shapes, given `image_grid_thw` as a static tuple of (t, h, w) per image. The
merger (RMSNorm ln_q, concat of the m*m patches of a block, Linear-GELU-Linear) maps to
out_hidden_size, and the window permutation is undone.

Decoder (Qwen2). Image features replace the embeddings of `image_token_id` tokens, in order over
the batch. Pre-norm layers: grouped-query attention (q/k/v with bias, o_proj without), SwiGLU MLP,
RMSNorm; multimodal rotary embedding (M-RoPE): each token has (temporal, height, width)
positions and the rotary frequencies are split by `mrope_section` among the three.
`rope_index` computes those positions as transformers' `get_rope_index`: text positions count up,
an image of merged grid (t, h, w) placed at position s gets (s + ti, s + hi, s + wi), and text
after it resumes at s + max(h, w); padding (attention_mask 0) is skipped and gets position 0. It
also returns `rope_deltas` (max position + 1 - number of tokens) for decoding: a new token's
positions are its count of earlier real tokens + delta (`text_position_ids`).

Generation uses `QwenVL.decode` with an explicit KV cache (per layer {"k", "v"}: (B, max_len,
kv_heads, head_dim), `init_cache`) written at `cache_index`; `embed` builds the prompt's
inputs_embeds. The plain forward `__call__` is the same code without a cache.

Real weights: `from_pretrained(dir)` reads config.json + model.safetensors (or a sharded
model.safetensors.index.json); `load_hf_qwen_vl_params` maps a state dict. Names mirror transformers,
e.g. model.language_model.layers.3.self_attn.q_proj.weight <->
params["language_model"]["layers_3"]["self_attn"]["q_proj"]["kernel"] (Linear weights transposed,
RMSNorm weight -> scale, patch_embed's Conv3d weight flattened to a (C*T*P*P, D) kernel). Older
checkpoints (Qwen/Qwen2.5-VL-7B-Instruct) name them model.layers.* and visual.*; both load.
`lm_head.weight` is skipped when tie_word_embeddings. Parity with transformers is tested against
goldens from tools/make_goldens_qwen_vl.py.

Deviations from transformers: the placeholder mask is always `input_ids == image_token_id` (what
the HF processor's mm_token_type_ids mark), and positions always come from `rope_index`, also
without images, so a left-padded text-only batch gets mask-aware positions (as HF's generate uses)
where HF's plain forward would use arange.
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
from emojax.io import tokenizers
from emojax.models import attention as attention_lib
from emojax.models import lora as lora_lib
from emojax.models import remat as remat_lib
from emojax.models.config_fields import known_fields

Dtype = Any

_ACT = {
  "silu": nn.silu,
  "gelu": functools.partial(nn.gelu, approximate=False),
  "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """transformers' Qwen2_5_VLVisionConfig fields (defaults are its defaults); rope_theta is
  rope_parameters["rope_theta"]."""

  depth: int = 32
  hidden_size: int = 3584
  hidden_act: str = "silu"
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  spatial_merge_size: int = 2
  temporal_patch_size: int = 2
  tokens_per_second: int = 4  # video only; kept so configs round-trip
  window_size: int = 112
  out_hidden_size: int = 3584
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  rope_theta: float = 10000.0

  def __post_init__(self):
    object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
    if self.hidden_act not in _ACT:
      raise ValueError(f"VisionConfig.hidden_act {self.hidden_act!r} not supported; known: {sorted(_ACT)}")
    if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
      raise ValueError(f"VisionConfig.hidden_size={self.hidden_size} must split into num_heads={self.num_heads} "
                       f"heads of a multiple of 4 dims (2-D rotary)")
    if self.window_size < self.spatial_merge_size * self.patch_size:
      raise ValueError(f"VisionConfig.window_size={self.window_size} is smaller than one merged block "
                       f"(spatial_merge_size*patch_size={self.spatial_merge_size * self.patch_size})")
    if any(not 0 <= i < self.depth for i in self.fullatt_block_indexes):
      raise ValueError(f"VisionConfig.fullatt_block_indexes={self.fullatt_block_indexes} outside depth={self.depth}")

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "VisionConfig":
    return cls(**known_fields(cls, d))


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
  """transformers' Qwen2_5_VLConfig: text fields flat (as Hub config.json files have them), token ids,
  and `vision_config`. Defaults are transformers' defaults. rope_theta and mrope_section come from
  HF's rope_scaling / rope_parameters."""

  vocab_size: int = 152064
  hidden_size: int = 8192
  intermediate_size: int = 29568
  num_hidden_layers: int = 80
  num_attention_heads: int = 64
  num_key_value_heads: int = 8
  hidden_act: str = "silu"
  max_position_embeddings: int = 32768
  rms_norm_eps: float = 1e-5
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, ...] = (16, 24, 24)
  tie_word_embeddings: bool = False
  image_token_id: int = 151655
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  vision_config: VisionConfig = VisionConfig()

  def __post_init__(self):
    object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
    if isinstance(self.vision_config, dict):
      object.__setattr__(self, "vision_config", VisionConfig.from_dict(self.vision_config))
    if self.hidden_act not in _ACT:
      raise ValueError(f"QwenVLConfig.hidden_act {self.hidden_act!r} not supported; known: {sorted(_ACT)}")
    if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"QwenVLConfig: hidden_size={self.hidden_size}, num_attention_heads="
                       f"{self.num_attention_heads}, num_key_value_heads={self.num_key_value_heads} do not divide")
    if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2:
      raise ValueError(f"QwenVLConfig.mrope_section={self.mrope_section} must be 3 sections summing to "
                       f"head_dim/2={self.head_dim // 2}")
    if self.vision_config.out_hidden_size != self.hidden_size:
      raise ValueError(f"vision_config.out_hidden_size={self.vision_config.out_hidden_size} must equal "
                       f"hidden_size={self.hidden_size}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "QwenVLConfig":
    """Inverse of `to_dict` (emojax's own saved configs)."""
    return cls(**known_fields(cls, d))

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["mrope_section"] = list(self.mrope_section)
    d["vision_config"]["fullatt_block_indexes"] = list(self.vision_config.fullatt_block_indexes)
    return d

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any]) -> "QwenVLConfig":
    """transformers config.json dict -> config: the flat layout of Hub checkpoints (text fields at top
    level, rope_scaling) and transformers 5's nested text_config with rope_parameters. Keys in the
    ignore-lists below are dropped; any other unknown key is an error."""
    d = dict(d)
    text = dict(d.pop("text_config", None) or {})
    vision = dict(d.pop("vision_config", None) or {})
    tied = bool(d.pop("tie_word_embeddings", False) or text.pop("tie_word_embeddings", False))
    d = {**d, **text}
    scaling, parameters = d.pop("rope_scaling", None), d.pop("rope_parameters", None)
    rope = dict(scaling or parameters or {})
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
      raise ValueError(f"Qwen2.5-VL rope scaling {rope} not supported (only the default M-RoPE)")
    if d.get("use_sliding_window"):
      raise ValueError("Qwen2.5-VL config has use_sliding_window=true: sliding-window attention is not supported")
    kw = {k: v for k, v in d.items() if k not in _IGNORED_HF_KEYS}
    kw["rope_theta"] = rope.get("rope_theta", kw.get("rope_theta", cls.rope_theta))
    kw["mrope_section"] = rope.get("mrope_section", cls.mrope_section)
    if "in_chans" in vision:  # the Qwen2-VL-era name the Hub config.json still uses
      vision.setdefault("in_channels", vision.pop("in_chans"))
    vrope = vision.pop("rope_parameters", None) or {}
    vision = {k: v for k, v in vision.items() if k not in _IGNORED_HF_VISION_KEYS}
    if "rope_theta" in vrope:
      vision["rope_theta"] = vrope["rope_theta"]
    kw["vision_config"] = VisionConfig.from_dict(vision)
    return cls(**known_fields(cls, dict(kw, tie_word_embeddings=tied)))


# Harmless keys of transformers' Qwen2.5-VL config.json files: PretrainedConfig bookkeeping,
# generation/training settings, ids we do not use (no video), and options whose non-default values
# are rejected in from_hf_dict.
_HF_COMMON_KEYS = frozenset({
  "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "initializer_range", "id2label",
  "label2id", "problem_type", "return_dict", "output_attentions", "output_hidden_states", "chunk_size_feed_forward",
  "is_encoder_decoder"})
_IGNORED_HF_KEYS = _HF_COMMON_KEYS | {
  "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "vision_token_id", "video_token_id",
  "attention_dropout", "max_window_layers", "layer_types", "sliding_window", "use_sliding_window"}
_IGNORED_HF_VISION_KEYS = _HF_COMMON_KEYS | {"spatial_patch_size"}  # Qwen2-VL-era duplicate of patch_size


PRESETS = {
  # The EmoShapes LVLM: byte-level vocabulary + markers, 32x32 images -> 8x8 patches -> 16 image
  # tokens; window_size 16 makes 2x2-token (4x4-patch) windows, so window attention is local.
  "tiny": QwenVLConfig(
    vocab_size=tokenizers.TINY_CHAT_VOCAB_SIZE, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=10000.0,
    mrope_section=(4, 6, 6), tie_word_embeddings=True, image_token_id=tokenizers.IMAGE_PAD_ID,
    vision_start_token_id=tokenizers.VISION_START_ID, vision_end_token_id=tokenizers.VISION_END_ID,
    vision_config=VisionConfig(
      depth=4, hidden_size=64, intermediate_size=192, num_heads=4, patch_size=4, spatial_merge_size=2,
      temporal_patch_size=2, tokens_per_second=2, window_size=16, out_hidden_size=128, fullatt_block_indexes=(1, 3))),
  # Qwen/Qwen2.5-VL-7B-Instruct config.json.
  "qwen25vl_7b": QwenVLConfig(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1000000.0,
    mrope_section=(16, 24, 24), tie_word_embeddings=False,
    vision_config=VisionConfig(
      depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
      temporal_patch_size=2, tokens_per_second=2, window_size=112, out_hidden_size=3584,
      fullatt_block_indexes=(7, 15, 23, 31))),
}


# --------------------------------------------------------------------------------------- index tables

Grid = tuple[tuple[int, int, int], ...]


def static_grid(image_grid_thw) -> Grid:
  """image_grid_thw (tuple, list or numpy (n, 3)) -> tuple of (t, h, w) ints; it fixes shapes, so it
  must be concrete (mark it static under jit)."""
  if image_grid_thw is None:
    return ()
  try:
    return tuple(tuple(int(v) for v in row) for row in np.asarray(image_grid_thw).reshape(-1, 3))
  except jax.errors.JAXTypeError as e:
    raise TypeError("image_grid_thw must be static (a tuple of (t, h, w)), not a traced array: close over it or "
                    "pass it as a static argument of jit") from e


@functools.cache
def vision_plan(grid: Grid, vc: VisionConfig) -> dict[str, np.ndarray]:
  """Index tables of the vision tower for a static grid, as transformers' get_vision_position_ids /
  get_vision_window_index / cu_seqlens define them. All per-patch tables are in window order.

  window_index: merged-token permutation into window order; reverse: its inverse;
  pos: (N, 2) patch (row, column) for the rotary embedding;
  window_seg / frame_seg: (N,) ids of the attention segment (window; image frame) of each patch.
  """
  m = vc.spatial_merge_size
  vw = vc.window_size // m // vc.patch_size  # window side in merged tokens
  pos, window_index, window_seg, frame_seg = [], [], [], []
  offset = n_windows = n_frames = 0
  for t, h, w in grid:
    if h % m or w % m:
      raise ValueError(f"image grid {(t, h, w)} is not a multiple of spatial_merge_size={m}")
    blocks = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pos.append(np.tile(np.stack([blocks(rows), blocks(cols)], -1), (t, 1)))
    gh, gw = h // m, w // m
    idx = np.arange(t * gh * gw).reshape(t, gh, gw)
    idx = np.pad(idx, ((0, 0), (0, -gh % vw), (0, -gw % vw)), constant_values=-1)
    nh, nw = idx.shape[1] // vw, idx.shape[2] // vw
    for window in idx.reshape(t, nh, vw, nw, vw).transpose(0, 1, 3, 2, 4).reshape(-1, vw * vw):
      kept = window[window >= 0]
      window_index.append(kept + offset)
      window_seg.append(np.full(len(kept) * m * m, n_windows))
      n_windows += 1
    frame_seg.append(np.repeat(np.arange(n_frames, n_frames + t), h * w))
    n_frames += t
    offset += t * gh * gw
  window_index = np.concatenate(window_index)
  pos = np.concatenate(pos).reshape(-1, m * m, 2)[window_index].reshape(-1, 2)
  return dict(window_index=window_index, reverse=np.argsort(window_index), pos=pos,
              window_seg=np.concatenate(window_seg), frame_seg=np.concatenate(frame_seg))


def rope_index(config: QwenVLConfig, input_ids, attention_mask=None, image_grid_thw=None):
  """transformers' get_rope_index for image inputs, jit-able with a static image_grid_thw.

  Returns position_ids (3, B, L) int32 (temporal, height, width; padding gets 0) and rope_deltas
  (B, 1). Runs of image tokens take the images of image_grid_thw in order over the whole batch.
  """
  grid = static_grid(image_grid_thw)
  b, l = input_ids.shape
  valid = jnp.ones((b, l), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
  m = config.vision_config.spatial_merge_size
  at = lambda a, i: jnp.take_along_axis(a, jnp.maximum(i, 0), axis=1)
  idx = jnp.broadcast_to(jnp.arange(l), (b, l))
  is_img = (input_ids == config.image_token_id) & valid
  # transformers drops padding before grouping tokens, so a run's predecessor is the previous real token
  last_valid = jax.lax.cummax(jnp.where(valid, idx, -1), axis=1)
  prev = jnp.pad(last_valid[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  start = is_img & ~((prev >= 0) & at(is_img, prev))
  image_no = jnp.cumsum(start.reshape(-1)).reshape(b, l) - 1
  sizes = np.array([(t, h // m, w // m) for t, h, w in grid] or [(1, 1, 1)], np.int32)
  gh, gw = (jnp.asarray(sizes[:, i])[jnp.clip(image_no, 0, len(sizes) - 1)] for i in (1, 2))
  advance = jnp.where(is_img, jnp.where(start, jnp.maximum(gh, gw), 0), valid.astype(jnp.int32))
  before = jnp.cumsum(advance, axis=1) - advance  # transformers' current_pos before each token
  run_start = jax.lax.cummax(jnp.where(start, idx, -1), axis=1)
  n_img = jnp.cumsum(is_img, axis=1)
  off = n_img - at(n_img, run_start)
  base = at(before, run_start)
  image_pos = jnp.stack([base + off // (gh * gw), base + off // gw % gh, base + off % gw])
  pos = jnp.where(is_img, image_pos, before[None])
  pos = jnp.where(valid, pos, 0).astype(jnp.int32)
  deltas = jnp.where(valid, pos, -1).max(axis=(0, 2)) + 1 - valid.sum(axis=1)
  return pos, deltas[:, None].astype(jnp.int32)


def text_position_ids(attention_mask, rope_deltas):
  """Positions of tokens after the prompt, as transformers decodes: (count of earlier real tokens)
  + rope_deltas, the same in all three channels. attention_mask (B, L) -> (3, B, L)."""
  mask = jnp.asarray(attention_mask).astype(jnp.int32)
  pos = jnp.where(mask > 0, jnp.cumsum(mask, axis=1) - 1, 0) + rope_deltas
  return jnp.broadcast_to(pos[None], (3, *pos.shape)).astype(jnp.int32)


def init_cache(config: QwenVLConfig, batch_size: int, max_len: int, dtype: Dtype = jnp.float32) -> tuple:
  """One {"k", "v"} dict of (B, max_len, kv_heads, head_dim) buffers per decoder layer. Separate
  buffers, not one stacked (layers, ...) array: a layer's write then updates its own buffer in
  place, where a stacked cache is copied whole by every layer's slice-after-update."""
  shape = (batch_size, max_len, config.num_key_value_heads, config.head_dim)
  return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.num_hidden_layers))


# -------------------------------------------------------------------------------------------- modules


def _rotate_half(x):
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-b, a], axis=-1)


def _rope(x, cos, sin):
  return (x * cos + _rotate_half(x) * sin).astype(x.dtype)


def _inv_freq(dim: int, theta: float) -> jax.Array:
  return 1.0 / theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)


class RMSNorm(nn.Module):
  """transformers' Qwen2RMSNorm: statistics in fp32, then weight * normed (in the input dtype)."""

  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)).astype(x.dtype)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


class GatedMLP(nn.Module):
  features: int
  intermediate: int
  act: str
  use_bias: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(n, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                                     name=name)
    h = _ACT[self.act](dense(self.intermediate, "gate_proj")(x)) * dense(self.intermediate, "up_proj")(x)
    return dense(self.features, "down_proj")(h)


class PatchEmbed(nn.Module):
  """The Conv3d `patch_embed.proj` (stride = kernel) as a bias-free matmul on flattened patches."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)


class VisionAttention(nn.Module):
  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation

  @nn.compact
  def __call__(self, x, cos, sin, segments):
    """segments (N,) int: a patch attends to the patches of its own window (or frame)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n, d = x.shape
    q, k, v = jnp.moveaxis(nn.Dense(3 * d, **kw, name="qkv")(x).reshape(n, 3, self.config.num_heads, -1), 1, 0)
    q, k = (_rope(t.astype(jnp.float32), cos, sin).astype(t.dtype) for t in (q, k))  # rotary in fp32
    out = attention_lib.dot_product_attention(q[None], k[None], v[None], segment_ids=segments[None],
                                              implementation=self.attention)[0]
    return nn.Dense(d, **kw, name="proj")(out.reshape(n, d))


class VisionBlock(nn.Module):
  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, cos, sin, segments):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = VisionAttention(c, **kw, attention=self.attention, name="attn")
    x = x + attn(RMSNorm(1e-6, **kw, name="norm1")(x), cos, sin, segments)
    h = RMSNorm(1e-6, **kw, name="norm2")(x)
    return x + GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, True, **kw, name="mlp")(h)


class PatchMerger(nn.Module):
  """RMSNorm, then each block of merge^2 consecutive patches concatenated -> Linear-GELU-Linear."""

  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = c.spatial_merge_size ** 2 * c.hidden_size
    x = RMSNorm(1e-6, **kw, name="ln_q")(x).reshape(-1, width)
    x = nn.gelu(nn.Dense(width, **kw, name="mlp_0")(x), approximate=False)
    return nn.Dense(c.out_hidden_size, **kw, name="mlp_2")(x)


class VisionTower(nn.Module):
  """pixel_values (N, C*T*P*P), static grid -> (N / merge^2, out_hidden_size) image tokens, images in order."""

  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # per-block rematerialisation (emojax.models.remat)
  attention: str = "auto"  # emojax.models.attention implementation

  @nn.compact
  def __call__(self, pixel_values, image_grid_thw):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    grid = static_grid(image_grid_thw)
    plan = vision_plan(grid, c)
    n, u = sum(t * h * w for t, h, w in grid), c.spatial_merge_size ** 2
    if pixel_values.shape != (n, c.patch_dim):
      raise ValueError(f"pixel_values has shape {pixel_values.shape}; image_grid_thw {grid} implies {(n, c.patch_dim)}")
    x = PatchEmbed(c.hidden_size, **kw, name="patch_embed")(pixel_values.astype(self.dtype))
    x = x.reshape(n // u, u, -1)[plan["window_index"]].reshape(n, -1)
    inv = _inv_freq(c.hidden_size // c.num_heads // 2, c.rope_theta)
    freqs = jnp.asarray(plan["pos"], jnp.float32)[:, :, None] * inv  # (N, 2, head_dim / 4)
    freqs = jnp.concatenate([freqs[:, 0], freqs[:, 1]] * 2, axis=-1)[:, None]  # [rows, cols, rows, cols]
    cos, sin = jnp.cos(freqs), jnp.sin(freqs)
    segs = {key: jnp.asarray(plan[key]) for key in ("window_seg", "frame_seg")}
    for i in range(c.depth):
      seg = segs["frame_seg" if i in c.fullatt_block_indexes else "window_seg"]
      block = remat_lib.block(VisionBlock, self.remat)(c, **kw, attention=self.attention, name=f"blocks_{i}")
      x = block(x, cos, sin, seg)
    return PatchMerger(c, **kw, name="merger")(x)[plan["reverse"]]


class Attention(nn.Module):
  """Grouped-query self-attention with M-RoPE; optionally through a KV cache (see DecoderLayer)."""

  config: QwenVLConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "auto"  # emojax.models.attention implementation

  @nn.compact
  def __call__(self, x, cos, sin, keys, kv=None):
    """keys: (key_mask (B, S) bool, q_offset): causal attention over the real keys, queries at q_offset + i."""
    c = self.config
    b, t, _ = x.shape
    proj = lambda heads, name, bias=True: nn.Dense(heads * c.head_dim, use_bias=bias, dtype=self.dtype,
                                                   param_dtype=self.param_dtype, name=name)
    q = _rope(proj(c.num_attention_heads, "q_proj")(x).reshape(b, t, -1, c.head_dim), cos, sin)
    k = _rope(proj(c.num_key_value_heads, "k_proj")(x).reshape(b, t, -1, c.head_dim), cos, sin)
    v = proj(c.num_key_value_heads, "v_proj")(x).reshape(b, t, -1, c.head_dim)
    cache = None
    if kv is not None:
      cache, index = kv
      cache = {name: jax.lax.dynamic_update_slice(cache[name], new.astype(cache[name].dtype), (0, index, 0, 0))
               for name, new in (("k", k), ("v", v))}
      k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
    key_mask, q_offset = keys
    out = attention_lib.dot_product_attention(q, k, v, causal=True, q_offset=q_offset, key_mask=key_mask,
                                              implementation=self.attention).reshape(b, t, -1)
    return proj(c.num_attention_heads, "o_proj", bias=False)(out), cache


class DecoderLayer(nn.Module):
  config: QwenVLConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, cos, sin, keys, kv=None):
    """kv: None (no cache), or (this layer's cache, cache_index): keys/values are written into the
    cache at cache_index and attention runs over the whole cache length. Returns (x, cache)."""
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = RMSNorm(c.rms_norm_eps, **kw, name="input_layernorm")(x)
    out, cache = Attention(c, **kw, attention=self.attention, name="self_attn")(h, cos, sin, keys, kv)
    x = x + out
    h = RMSNorm(c.rms_norm_eps, **kw, name="post_attention_layernorm")(x)
    return x + GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, False, **kw, name="mlp")(h), cache


class TextModel(nn.Module):
  """transformers' Qwen2_5_VLTextModel: embed_tokens, layers, final norm (no lm_head)."""

  config: QwenVLConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # per-layer rematerialisation (emojax.models.remat)
  # the uncached forward (SFT, GRPO scoring) runs the decoder layers as one lax.scan over their stacked params
  # (compiled once; the params tree stays per layer); KV-cache decoding keeps the unrolled loop
  scan_layers: bool = False
  attention: str = "auto"

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, **kw)
    self.layers = [remat_lib.block(DecoderLayer, self.remat)(c, **kw, attention=self.attention)
                   for _ in range(c.num_hidden_layers)]
    self.norm = RMSNorm(c.rms_norm_eps, **kw)

  def embed(self, input_ids):
    return self.embed_tokens(input_ids)

  def attend(self, x):
    return self.embed_tokens.attend(x)

  def __call__(self, x, position_ids, attention_mask, cache=None, cache_index=0):
    c = self.config
    b, t, _ = x.shape
    freqs = position_ids.astype(jnp.float32)[..., None] * _inv_freq(c.head_dim, c.rope_theta)  # (3, B, T, hd/2)
    channel = np.repeat(np.arange(3), c.mrope_section)  # which of t/h/w drives each frequency
    freqs = jnp.take_along_axis(freqs, jnp.asarray(channel)[None, None, None, :], axis=0)[0]
    freqs = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None]  # (B, T, 1, hd)
    cos, sin = jnp.cos(freqs).astype(x.dtype), jnp.sin(freqs).astype(x.dtype)
    keys = (jnp.asarray(attention_mask).astype(bool), cache_index)  # causal from cache_index, real keys only
    if self.scan_layers and cache is None and c.num_hidden_layers > 1 and not self.is_initializing():
      return self.norm(self._scan_layers(x, cos, sin, keys)), None
    new_cache = []
    for i, layer in enumerate(self.layers):
      x, layer_cache = layer(x, cos, sin, keys, None if cache is None else (cache[i], cache_index))
      new_cache.append(layer_cache)
    return self.norm(x), (None if cache is None else tuple(new_cache))

  def _scan_layers(self, x, cos, sin, keys):
    """The decoder layers as lax.scans over their stacked params (one per stretch of alike LoRA adapters)."""
    params, n = self.variables["params"], self.config.num_hidden_layers
    adapters = [lora_lib.adapters_at((*self.path, f"layers_{i}")) for i in range(n)]
    layer = DecoderLayer(self.config, dtype=self.dtype, param_dtype=self.param_dtype, attention=self.attention,
                         parent=None)  # unbound
    call = lambda m, v, h: m.apply(v, h, cos, sin, keys, None)[0]
    for i, end in remat_lib.runs([lora_lib.structure(a) for a in adapters], True):
      x = remat_lib.scan(layer, [params[f"layers_{k}"] for k in range(i, end)], adapters[i:end], x, call, self.remat)
    return x


class QwenVL(nn.Module):
  """transformers' Qwen2_5_VLForConditionalGeneration (images). `image_grid_thw` is static everywhere."""

  config: QwenVLConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # rematerialisation of every vision block and decoder layer (emojax.models.remat)
  scan_layers: bool = False  # decoder layers as one lax.scan in the uncached forward (TextModel.scan_layers)
  attention: str = "auto"  # emojax.models.attention implementation of the vision blocks and decoder layers

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.visual = VisionTower(c.vision_config, **kw, remat=self.remat, attention=self.attention)
    self.language_model = TextModel(c, **kw, remat=self.remat, scan_layers=self.scan_layers, attention=self.attention)
    if not c.tie_word_embeddings:
      self.lm_head = nn.Dense(c.vocab_size, use_bias=False, **kw)

  def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
    """-> logits (B, L, vocab_size)."""
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    x = self.embed(input_ids, pixel_values, image_grid_thw)
    position_ids, _ = rope_index(self.config, input_ids, attention_mask, image_grid_thw)
    return self.decode(x, position_ids, attention_mask)[0]

  def image_features(self, pixel_values, image_grid_thw):
    return self.visual(pixel_values, image_grid_thw)

  def embed(self, input_ids, pixel_values=None, image_grid_thw=None):
    """Token embeddings with image features spliced in at image_token_id positions, in order over the batch."""
    x = self.language_model.embed(input_ids)
    if pixel_values is None:
      return x
    if image_grid_thw is None:
      raise ValueError("pixel_values given without image_grid_thw")
    feats = self.image_features(pixel_values, image_grid_thw).astype(x.dtype)
    if not isinstance(input_ids, jax.core.Tracer):  # concrete ids: check the count (traced: the caller's job)
      n = int((np.asarray(input_ids) == self.config.image_token_id).sum())
      if n != feats.shape[0]:
        raise ValueError(f"{n} image tokens in input_ids but the images give {feats.shape[0]} features "
                         f"(image_grid_thw {static_grid(image_grid_thw)})")
    return splice_images(self.config, x, input_ids, feats)

  def decode(self, inputs_embeds, position_ids, attention_mask, cache=None, cache_index=0):
    """Decoder + lm_head on inputs_embeds (B, T, D) at position_ids (3, B, T) -> (logits, cache).

    Without a cache, attention_mask is (B, T). With a cache (`init_cache`), the T new tokens occupy
    slots cache_index.. of the cache, attention_mask is (B, max_len) over all slots (1 = real token),
    and the updated cache is returned.
    """
    h, cache = self.language_model(inputs_embeds, position_ids, attention_mask, cache, cache_index)
    logits = self.language_model.attend(h) if self.config.tie_word_embeddings else self.lm_head(h)
    return logits, cache

  @classmethod
  def from_pretrained(cls, directory, dtype: Dtype = jnp.float32, param_dtype: Dtype | None = None):
    return from_pretrained(directory, dtype=dtype, param_dtype=param_dtype)


def splice_images(config: QwenVLConfig, embeds, input_ids, feats):
  """embeds (B, L, D) with the rows of feats (N, D) put at the image_token_id positions, in order over
  the batch (row-major), as transformers' masked_scatter does."""
  is_img = input_ids == config.image_token_id
  row = jnp.clip(jnp.cumsum(is_img.reshape(-1)) - 1, 0, feats.shape[0] - 1).reshape(is_img.shape)
  return jnp.where(is_img[..., None], feats[row].astype(embeds.dtype), embeds)


def dummy_inputs(config: QwenVLConfig):
  """One image of a single merged token and its placeholder: (input_ids, attention_mask, pixel_values, grid)."""
  m = config.vision_config.spatial_merge_size
  ids = jnp.array([[0, config.image_token_id]], jnp.int32)
  return ids, jnp.ones_like(ids), jnp.zeros((m * m, config.vision_config.patch_dim)), ((1, m, m),)


# ------------------------------------------------------------------------------------- weight import

_LISTS = re.compile(r"^(blocks|layers|mlp)_(\d+)$")  # torch ModuleList / Sequential members


@functools.cache
def param_shapes(config: QwenVLConfig) -> dict:
  """Abstract params pytree (jax.ShapeDtypeStruct leaves) of QwenVL(config)."""
  ids, mask, pixels, grid = dummy_inputs(config)
  init = lambda key: QwenVL(config).init(key, ids, mask, pixels, grid)
  return jax.eval_shape(init, jax.random.key(0))["params"]


def init_params(config: QwenVLConfig, rng, std: float = 0.02):
  """Random weights as transformers initialises Qwen2.5-VL: every kernel and embedding N(0, std²)
  (initializer_range 0.02), norm scales 1, biases 0. Flax's defaults would give the tied
  embedding unit variance, i.e. initial logits of std ~sqrt(hidden): a near-one-hot first
  guess and a large first loss. Built from `param_shapes` (no forward is compiled), all normals
  drawn as one vector and cut into leaves: one RNG op compiles in a fraction of the time of one
  per leaf."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(config))
  kind = [path[-1].key if path[-1].key in ("scale", "bias") else "normal" for path, _ in leaves]
  sizes = [int(np.prod(s.shape)) if k == "normal" else 0 for k, (_, s) in zip(kind, leaves)]
  flat = std * jax.random.normal(rng, (sum(sizes),), jnp.float32)
  offsets = np.cumsum([0] + sizes)
  out = []
  for k, (_, s), start, size in zip(kind, leaves, offsets, sizes):
    if k == "normal":
      out.append(flat[start:start + size].reshape(s.shape).astype(s.dtype))
    else:
      out.append(jnp.full(s.shape, float(k == "scale"), s.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def _hf_key(path: tuple[str, ...]) -> str:
  """('language_model', 'layers_3', 'mlp', 'up_proj', 'kernel') -> model.language_model.layers.3.mlp.up_proj.weight"""
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(path[-1], path[-1])
  key = ".".join([_LISTS.sub(r"\1.\2", p) for p in path[:-1]] + [leaf])
  return key if path[0] == "lm_head" else f"model.{key}"


def _canonical(key: str) -> str:
  """Older checkpoints' names (visual.*, model.layers.*) -> transformers 5's."""
  if key.startswith("visual."):
    return f"model.{key}"
  if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
    return f"model.language_model.{key[len('model.'):]}"
  return key


def load_hf_qwen_vl_params(state_dict: dict[str, np.ndarray], config: QwenVLConfig, dtype: Dtype | None = None):
  """transformers Qwen2_5_VLForConditionalGeneration state dict -> QwenVL params (host numpy, cast to
  `dtype` if given). Raises ValueError naming missing/unexpected keys or a tensor whose shape the
  config does not imply."""
  shapes = traverse_util.flatten_dict(param_shapes(config))
  keys = {_hf_key(path): path for path in shapes}
  state = {_canonical(k): v for k, v in state_dict.items()}
  if config.tie_word_embeddings:
    state.pop("lm_head.weight", None)  # the tied copy of embed_tokens some saves include
  vc = config.vision_config
  conv3d = (vc.in_channels, vc.temporal_patch_size, vc.patch_size, vc.patch_size)

  def convert(path, w):
    if path[-1] != "kernel":
      return w
    if path[1] == "patch_embed" and w.shape[1:] != conv3d:  # Conv3d (D, C, T, P, P); other layouts must fail
      return w
    return w.reshape(w.shape[0], -1).T

  params = hf_weights.to_params(state, shapes, keys, what="Qwen2.5-VL", convert=convert, dtype=dtype)
  return traverse_util.unflatten_dict(params)


def from_pretrained(directory, dtype: Dtype = jnp.float32, param_dtype: Dtype | None = None):
  """transformers Qwen2.5-VL directory (config.json + model*.safetensors, e.g. Qwen/Qwen2.5-VL-7B-Instruct)
  -> (QwenVL module, host params)."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Qwen2.5-VL directory {directory} not found: put a transformers Qwen2.5-VL checkpoint "
                            f"(config.json + model*.safetensors, e.g. Qwen/Qwen2.5-VL-7B-Instruct) there")
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: expected a transformers Qwen2.5-VL directory")
  with open(config_path) as f:
    config = QwenVLConfig.from_hf_dict(json.load(f))
  param_dtype = param_dtype or dtype
  state = hf_weights.read_safetensors(directory, "model", "the Qwen2.5-VL weights")
  params = load_hf_qwen_vl_params(state, config, dtype=param_dtype)
  return QwenVL(config, dtype=dtype, param_dtype=param_dtype), params
