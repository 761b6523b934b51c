"""Stable Diffusion 3 / 3.5 in Flax over a diffusers pipeline directory (`StableDiffusion3Pipeline`'s
layout): prompt encoding and CFG generation as diffusers does them, the VAE decoding latents to images.

Prompt encoding (diffusers' `encode_prompt`): each CLIP text encoder (CLIP-L/14 and OpenCLIP bigG/14,
both with projection) reads its tokenizer's ids padded to the tokenizer's `model_max_length` and gives
its penultimate hidden states and its projected pooled vector; the two state sequences are concatenated
on the feature axis and zero-padded to T5's width, T5's last states (ids padded to
`max_sequence_length`, no attention mask, as diffusers calls it) are appended on the sequence axis,
and pooled = both projected pooled vectors concatenated. Without text_encoder_3 the T5 part is zeros
of the CLIP length. Generation: the scheduler's shifted sigmas (`diffusion.schedule.sd3_sigmas`), Euler
steps of the guided velocity v_u + g (v_c - v_u) from latents (NHWC, emojax's layout; diffusers' are
NCHW), then `vae.from_diffusion_latents` and the VAE decoder. Nothing is downloaded.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax.diffusion import schedule
from emojax.diffusion.rollout import cfg_velocity, rollout
from emojax.io import clip_inputs
from emojax.models import mmdit, t5 as t5_lib, text_encoder as te, vae as vae_lib

PIPELINE_CLASSES = ("StableDiffusion3Pipeline",)
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {what}")
  with open(path) as f:
    return json.load(f)


def read_model_index(directory: str) -> dict:
  """model_index.json, checked: an SD3 pipeline with every component it needs on disk."""
  index = _read_json(os.path.join(directory, "model_index.json"),
                     f"put a diffusers SD3 / SD3.5 pipeline directory (model_index.json, transformer/, vae/, "
                     f"text_encoder*/, tokenizer*/, scheduler/) at {directory}")
  name = index.get("_class_name")
  if name not in PIPELINE_CLASSES:
    raise ValueError(f"{directory} holds a {name}, not an SD3 pipeline ({', '.join(PIPELINE_CLASSES)})")
  for c in COMPONENTS + (("text_encoder_3", "tokenizer_3") if _present(index, "text_encoder_3") else ()):
    if not _present(index, c) or not os.path.isdir(os.path.join(directory, c)):
      raise FileNotFoundError(f"SD3 pipeline {directory} has no {c}/: copy the checkpoint's {c} folder there")
  return index


def _present(index: dict, component: str) -> bool:
  entry = index.get(component)
  return isinstance(entry, (list, tuple)) and entry[0] is not None


def _tokenizer(directory: str, vocab_size: int) -> clip_inputs.Tokenizer:
  """The folder's tokenizer, padding to its own model_max_length (77 for SD3's CLIP tokenizers)."""
  tok = clip_inputs.Tokenizer(directory, max_length=1)
  tok = clip_inputs.Tokenizer(None, tok.tokenizer.model_max_length, tokenizer=tok.tokenizer)
  if len(tok.tokenizer) > vocab_size:
    raise ValueError(f"tokenizer {directory} has {len(tok.tokenizer)} tokens but its text encoder only "
                     f"{vocab_size}: the tokenizer and text encoder folders come from different checkpoints")
  return tok


class SD3Pipeline:
  """Modules, host parameters and tokenizers of one pipeline directory; `encode_prompt` and `generate`."""

  def __init__(self, directory, dtype: Any = jnp.float32):
    directory = os.fspath(directory)
    index = read_model_index(directory)
    sub = lambda c: os.path.join(directory, c)
    sched = _read_json(os.path.join(sub("scheduler"), "scheduler_config.json"), "copy the checkpoint's scheduler/")
    if sched.get("_class_name") != "FlowMatchEulerDiscreteScheduler" or sched.get("use_dynamic_shifting"):
      raise ValueError(f"{sub('scheduler')}: only FlowMatchEulerDiscreteScheduler without dynamic shifting "
                       f"(SD3 / SD3.5's) is supported, got {sched.get('_class_name')}")
    self.shift = float(sched.get("shift", 1.0))
    # dtype is the compute dtype; every component keeps its weights as stored (cast per op)
    self.transformer, self.transformer_params = mmdit.from_pretrained(sub("transformer"), dtype=dtype,
                                                                      param_dtype=jnp.float32)
    self.vae, self.vae_params = vae_lib.from_pretrained(sub("vae"), dtype=dtype)
    self.clip = []
    for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
      module, params = te.from_pretrained(sub(enc), dtype=dtype, output_layer=-2)
      self.clip.append((module, params, _tokenizer(sub(tok), module.config.vocab_size)))
    self.t5 = None
    if _present(index, "text_encoder_3"):
      module, params = t5_lib.from_pretrained(sub("text_encoder_3"), dtype=dtype)
      self.t5 = (module, params, _tokenizer(sub("tokenizer_3"), module.config.vocab_size))
    tc = self.transformer.config
    clip_width = sum(m.config.hidden_size for m, _, _ in self.clip)
    pooled_width = sum(m.config.projection_dim for m, _, _ in self.clip)
    t5_width = self.t5[0].config.d_model if self.t5 else tc.joint_attention_dim
    if t5_width != tc.joint_attention_dim or clip_width > t5_width or pooled_width != tc.pooled_projection_dim:
      raise ValueError(f"{directory}: text encoders give states of width {clip_width} (CLIP) / {t5_width} (T5) and "
                       f"pooled {pooled_width}, the transformer wants joint_attention_dim {tc.joint_attention_dim} "
                       f"and pooled_projection_dim {tc.pooled_projection_dim}")
    self.vae_scale_factor = self.vae.config.downsample_factor
    self.default_size = tc.sample_size * self.vae_scale_factor

  def context_length(self, max_sequence_length: int) -> int:
    """Tokens of encode_prompt's states: the CLIP length, then T5's max_sequence_length (or CLIP's again)."""
    clip_len = self.clip[0][2].max_length
    return clip_len + (max_sequence_length if self.t5 is not None else clip_len)

  @classmethod
  def from_pretrained(cls, directory, dtype: Any = jnp.float32) -> "SD3Pipeline":
    return cls(directory, dtype=dtype)

  # ------------------------------------------------------------------------------------ prompts

  def _encode(self, prompts: Sequence[str], max_sequence_length: int):
    states, pooled = [], []
    for module, params, tok in self.clip:
      ids, _ = tok(prompts)
      s, p = _text_forward(module, params, jnp.asarray(ids))
      states.append(s)
      pooled.append(p)
    clip_states = jnp.concatenate(states, -1)
    width = self.transformer.config.joint_attention_dim
    clip_states = jnp.pad(clip_states, ((0, 0), (0, 0), (0, width - clip_states.shape[-1])))
    if self.t5 is None:
      t5_states = jnp.zeros((len(prompts), self.clip[0][2].max_length, width), clip_states.dtype)
    else:
      module, params, tok = self.t5
      ids, _ = clip_inputs.Tokenizer(None, max_sequence_length, tokenizer=tok.tokenizer)(prompts)
      t5_states = _text_forward(module, params, jnp.asarray(ids))
    states = jnp.concatenate([clip_states.astype(jnp.float32), t5_states.astype(jnp.float32)], 1)
    return states, jnp.concatenate(pooled, -1).astype(jnp.float32)

  def encode_prompt(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                    max_sequence_length: int = 256):
    """-> (prompt_embeds (B, L_clip + max_sequence_length, joint_dim), pooled (B, pooled_dim)), plus the
    negative pair when negative_prompts is given ("" per prompt is diffusers' default negative)."""
    prompts = _check_prompts(prompts, "prompts")
    out = self._encode(prompts, max_sequence_length)
    if negative_prompts is None:
      return out
    negative_prompts = _check_prompts(negative_prompts, "negative_prompts", len(prompts))
    return out + self._encode(negative_prompts, max_sequence_length)

  # --------------------------------------------------------------------------------- generation

  def generate_unit(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None, latents=None, *,
                    num_steps: int = 28, guidance_scale: float = 7.0, seed: int = 0, height: int | None = None,
                    width: int | None = None, max_sequence_length: int = 256) -> np.ndarray:
    """Float images (N, H, W, 3) in [0, 1], as diffusers' output_type="np"."""
    prompts = _check_prompts(prompts, "prompts")
    cfg = guidance_scale > 1  # diffusers' do_classifier_free_guidance
    if cfg and negative_prompts is None:
      negative_prompts = [""] * len(prompts)
    embeds = self.encode_prompt(prompts, negative_prompts if cfg else None, max_sequence_length)
    factor = self.vae_scale_factor * self.transformer.config.patch_size
    h, w = height or self.default_size, width or self.default_size
    if h % factor or w % factor:
      raise ValueError(f"height {h} and width {w} must be multiples of {factor} (VAE factor x patch size)")
    shape = (len(prompts), h // self.vae_scale_factor, w // self.vae_scale_factor, self.transformer.config.in_channels)
    if latents is None:
      latents = jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)
    elif tuple(latents.shape) != shape:
      raise ValueError(f"latents have shape {tuple(latents.shape)}, expected NHWC {shape}")
    sigmas = jnp.asarray(schedule.sd3_sigmas(num_steps, self.shift))
    images = _sample(self.transformer, self.vae, cfg, self.transformer_params, self.vae_params, jnp.asarray(latents),
                     sigmas, embeds, jnp.float32(guidance_scale))
    return np.asarray(images)

  def generate(self, prompts, negative_prompts=None, latents=None, **kw) -> np.ndarray:
    """uint8 images (N, H, W, 3), rounded as diffusers' numpy-to-PIL conversion."""
    return (self.generate_unit(prompts, negative_prompts, latents, **kw) * 255).round().astype(np.uint8)


def _check_prompts(prompts, what: str, n: int | None = None) -> list[str]:
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if not prompts or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"{what} must be a non-empty list of strings")
  if n is not None and len(prompts) != n:
    raise ValueError(f"{len(prompts)} {what} for {n} prompts")
  return prompts


@functools.partial(jax.jit, static_argnums=0)
def _text_forward(module, params, ids):
  """A text encoder (CLIP: (states, pooled); T5: states) on padded ids, without an attention mask (as SD3)."""
  return module.apply({"params": params}, ids)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sample(transformer, vae, cfg, t_params, v_params, latents, sigmas, embeds, guidance_scale):
  """One program per (modules, CFG or not, shapes); the guidance scale and the sigmas are traced."""
  cond, uncond = (embeds[0], embeds[1]), (embeds[2:] if cfg else None)
  guidance_scale = guidance_scale if cfg else None

  def apply_fn(x, sigma, ctx):
    return transformer.apply({"params": t_params}, x, ctx[0], ctx[1], sigma * schedule.NUM_TRAIN_TIMESTEPS)

  velocity = cfg_velocity(apply_fn, cond, tuple(uncond) if uncond is not None else None, guidance_scale)
  x, _ = rollout(velocity, latents, sigmas, jax.random.PRNGKey(0), noise_level=0.0, method="ode")
  z = vae_lib.from_diffusion_latents(x, vae.config)
  return vae_lib.to_unit_images(vae.apply({"params": v_params}, z, method="decode").astype(jnp.float32))
