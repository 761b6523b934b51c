"""One generator interface for both scales: what the GRPO job, evaluation and `emojax.generate` need of a
generator, for the tiny world's pixel-space generator and for a diffusers SD3 / SD3.5 pipeline.

A policy holds host params (top-level groups; `groups`), the latent (or pixel) shape it samples, and pure
functions the jitted steps close over:
  prompt_fields(prompts, cfg) -> host batch fields (tiny: token ids; SD3: the frozen text encoders' states,
    computed here, once per step, outside the gradient);
  encode_text(params, ids) (tiny only: its text encoder is a parameter group);
  add_emotion(params, text, va, mask) -> conditioning (the V-A tokens join the context and the pooled vector);
  velocity(params, x, sigma, cond);  decode(constants, x) -> images in [-1, 1] (SD3: the VAE, its weights in
    `decode_constants()`);  sample(params, prompts, va, x_init ...) -> images;  export(directory, params, ...).

SD3: the V-A embedding (`models.generator.EmotionEmbed`, output layers zero-initialised, so the pretrained
pipeline starts unchanged) is the group "emotion" beside "transformer". An SD3 export is an emojax asset
directory (config.json with kind "sd3_emotion" naming the base pipeline directory, params.safetensors with
the emotion group) plus, when trained, `pytorch_lora_weights.safetensors` (diffusers' LoRA layout) or a full
`transformer/`; `load` reads either a pipeline directory or such an export.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from emojax.diffusion import schedule
from emojax.diffusion.rollout import cfg_velocity, rollout
from emojax.io import assets, hf_weights
from emojax.io.images import to_uint8
from emojax.models import generator as gen_lib
from emojax.models import lora as lora_lib
from emojax.models import mmdit, vae as vae_lib
from emojax.pipelines import tiny

SD3_KIND = "sd3_emotion"
LORA_FILE = "pytorch_lora_weights.safetensors"


def is_sd3(path: str) -> bool:
  """A diffusers SD3 pipeline directory or an emojax SD3 export (else: a tiny generator directory)."""
  if not path:
    return False
  if os.path.isfile(os.path.join(path, "model_index.json")):
    return True
  cfg = os.path.join(path, "config.json")
  if os.path.isfile(cfg):
    with open(cfg) as f:
      return json.load(f).get("kind") == SD3_KIND
  return False


SD3_HINT = ("a diffusers SD3 / SD3.5 pipeline directory (model_index.json, transformer/, vae/, text_encoder*/, "
            "tokenizer*/, scheduler/) or an emojax SD3 export")


def load(path: str, kind: str | None = None, dtype=jnp.float32, remat: str = "none", scan_layers: bool = False,
         attention: str = "auto", **sd3_options):
  """The policy of a generator directory. kind "tiny": an emojax generator directory ("" = the shipped one);
  "sd3": a pipeline directory or SD3 export, sd3_options (resolution, max_sequence_length, emotion_tokens,
  emotion_hidden, seed) applying to a pipeline directory; None: whichever the directory is."""
  kind = kind or ("sd3" if is_sd3(path) else "tiny")
  if kind == "sd3":
    if not path:
      raise ValueError(f"model.kind=sd3 needs --config.model.pretrained=DIR: {SD3_HINT}")
    if not is_sd3(path):
      raise FileNotFoundError(f"{path} is not {SD3_HINT}")
    return SD3Policy(path, dtype=dtype, remat=remat, scan_layers=scan_layers, attention=attention, **sd3_options)
  if kind != "tiny":
    raise ValueError(f"unknown generator kind {kind!r}; use 'tiny' or 'sd3'")
  if is_sd3(path):
    raise ValueError(f"{path} is an SD3 pipeline or export: set --config.model.kind=sd3")
  return TinyPolicy(*tiny.load_generator(path, dtype, remat, scan_layers, attention))


class TinyPolicy:
  """The tiny world's generator: byte tokens, its own text encoder, pixel space (decode = clip)."""

  adapted_group, lora_root = "mmdit", ("mmdit",)  # where LoRA adapters attach
  shift = 3.0  # the sigma-schedule shift the tiny generator was pretrained and is sampled with
  layout_judge = True  # EmoShapes images: the layout judge reads them

  def __init__(self, gen, gcfg, params=None):
    self.gen, self.gcfg, self.params = gen, gcfg, params
    self.tok = tiny.tokenizer_for(gcfg)
    self._uncond = self.tok([""])[0]
    s = gcfg.mmdit.sample_size
    self.image_shape, self.image_size = (s, s, gcfg.mmdit.in_channels), s

  def prompt_fields(self, prompts, cfg: bool) -> dict:
    ids = self.tok(list(prompts))
    return {"input_ids": ids, "uncond_ids": np.broadcast_to(self._uncond, ids.shape).copy()}

  def prompt_field_shapes(self, n: int, cfg: bool) -> dict:
    """ShapeDtypeStructs of prompt_fields for n prompts."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.prompt_fields([""] * n, cfg))

  def encode_text(self, params, ids):
    return tiny.encode_text(self.gen, params, ids)

  def add_emotion(self, params, text, va, mask=None):
    return tiny.add_emotion(self.gen, params, text, va, mask)

  def velocity(self, params, x, sigma, cond):
    return tiny.apply_velocity(self.gen, params, x, sigma, cond)

  def decode_constants(self) -> dict:
    return {}

  def decode(self, constants, x):
    return jnp.clip(x, -1.0, 1.0)

  def sample(self, params, prompts, va, key, *, num_steps: int, shift: float, cfg_scale: float):
    """ODE images in [-1, 1] of prompts at va (N, 2) from the noise of `key`."""
    ids = self.tok(list(prompts))
    return tiny.generate(self.gen, params, ids, self.tok([""] * len(ids)), jnp.asarray(va), key, num_steps=num_steps,
                         shift=shift, cfg_scale=cfg_scale, method="ode")

  def generate_uint8(self, params, prompts, va, **kw) -> np.ndarray:
    return tiny.generate_uint8(self.gen, self.gcfg, params, prompts, va, **kw)

  def export(self, directory, params, dtype=np.float32, write_more=None):
    tiny.export_generator(directory, self.gcfg, params, dtype, write_more=write_more)


class SD3Policy:
  """A diffusers SD3 / SD3.5 pipeline (emojax.pipelines.sd3) with a V-A embedding: latent space, frozen CLIP
  and T5 encoders run on the host batch, the VAE decodes before rewards."""

  adapted_group, lora_root = "transformer", ()
  layout_judge = False

  def __init__(self, path: str, dtype=jnp.float32, remat: str = "none", scan_layers: bool = False,
               attention: str = "auto", resolution: int = 0, max_sequence_length: int = 256, emotion_tokens: int = 4, emotion_hidden: int = 256, seed: int = 0,
               pipe=None):
    """pipe: an already built pipeline (e.g. AbstractSD3Pipeline for planning) instead of reading `path`."""
    from emojax.pipelines import sd3
    export, export_dir = None, os.path.abspath(path)
    if pipe is None and not os.path.isfile(os.path.join(path, "model_index.json")):  # an emojax SD3 export
      emotion_params, export = assets.load(path, "SD3 generator export", "write one with the generator GRPO job")
      path, emotion_tokens, emotion_hidden = export["pipeline"], export["emotion_tokens"], export["emotion_hidden"]
      resolution = resolution or export["resolution"]
    self.pipeline_dir, self._uncond, self._encoded = os.path.abspath(path), None, {}
    self.pipe = pipe or sd3.SD3Pipeline.from_pretrained(path, dtype=dtype)
    self.shift = self.pipe.shift  # the scheduler's
    tc = self.pipe.transformer.config
    self.transformer = mmdit.MMDiT(tc, dtype=dtype, param_dtype=jnp.float32, remat=remat, scan_layers=scan_layers,
                                   attention=attention)
    self.emotion = gen_lib.EmotionEmbed(emotion_tokens, tc.joint_attention_dim, tc.pooled_projection_dim,
                                        emotion_hidden, dtype=dtype)
    self.emotion_tokens, self.emotion_hidden, self.max_sequence_length = emotion_tokens, emotion_hidden, max_sequence_length
    factor = self.pipe.vae_scale_factor
    self.image_size = resolution or self.pipe.default_size
    if self.image_size % (factor * tc.patch_size):
      raise ValueError(f"resolution {self.image_size} must be a multiple of {factor * tc.patch_size} "
                       f"(the VAE factor {factor} x patch size {tc.patch_size})")
    side = self.image_size // factor
    self.image_shape = (side, side, tc.in_channels)
    transformer = self.pipe.transformer_params
    if export is None:
      emotion = jax.device_get(self.emotion.init(jax.random.key(seed), jnp.zeros((1, 2)))["params"])
    else:
      emotion = emotion_params["emotion"]
      transformer = _exported_transformer(export_dir, transformer)
    self.params = {"transformer": transformer, "emotion": emotion}

  # ------------------------------------------------------------------- pieces of the jitted steps

  def prompt_fields(self, prompts, cfg: bool) -> dict:
    fields = {"text": self._text(list(prompts))}
    if cfg:  # diffusers' default negative prompt, "": encoded once, repeated per row
      if self._uncond is None:
        self._uncond = self._text([""])
      fields["text_uncond"] = {k: np.repeat(v, len(prompts), axis=0) for k, v in self._uncond.items()}
    return fields

  def prompt_field_shapes(self, n: int, cfg: bool) -> dict:
    """ShapeDtypeStructs of prompt_fields for n prompts (no encoder runs)."""
    tc = self.transformer.config
    text = {"context": jax.ShapeDtypeStruct((n, self.pipe.context_length(self.max_sequence_length),
                                             tc.joint_attention_dim), jnp.float32),
            "pooled": jax.ShapeDtypeStruct((n, tc.pooled_projection_dim), jnp.float32)}
    return {"text": text, "text_uncond": text} if cfg else {"text": text}

  def _text(self, prompts) -> dict:
    """The frozen encoders' states; the last few prompt lists are remembered (an eval set repeats its own)."""
    key = tuple(prompts)
    if key not in self._encoded:
      states, pooled = self.pipe.encode_prompt(list(prompts), max_sequence_length=self.max_sequence_length)
      if len(self._encoded) >= 4:
        self._encoded.pop(next(iter(self._encoded)))
      self._encoded[key] = {"context": np.asarray(states), "pooled": np.asarray(pooled)}
    return self._encoded[key]

  def encode_text(self, params, ids):
    raise ValueError("an SD3 policy encodes prompts on the host (prompt_fields); its text encoders are not params")

  def add_emotion(self, params, text, va, mask=None):
    return gen_lib.append_emotion(text, *self.emotion.apply({"params": params["emotion"]}, va), mask)

  def velocity(self, params, x, sigma, cond):
    return self.transformer.apply({"params": params["transformer"]}, x, cond["context"], cond["pooled"],
                                  sigma * schedule.NUM_TRAIN_TIMESTEPS)

  def decode_constants(self) -> dict:
    return {"vae": self.pipe.vae_params}

  def decode(self, constants, x):
    z = vae_lib.from_diffusion_latents(x, self.pipe.vae.config)
    decoded = self.pipe.vae.apply({"params": constants["vae"]}, z, method="decode").astype(jnp.float32)
    return vae_lib.to_unit_images(decoded) * 2.0 - 1.0

  # ------------------------------------------------------------------------- generation

  def sample(self, params, prompts, va, key, *, num_steps: int, shift: float, cfg_scale: float):
    """ODE images in [-1, 1] of prompts at va (N, 2) from the noise of `key`, CFG against "" without emotion."""
    x_init = jax.random.normal(key, (len(prompts), *self.image_shape), jnp.float32)
    return self._sample_from(params, list(prompts), va, x_init, num_steps=num_steps, shift=shift, cfg_scale=cfg_scale)

  def _sample_from(self, params, prompts, va, x_init, *, num_steps, shift, cfg_scale):
    fields = self.prompt_fields(prompts, cfg_scale != 1.0)
    sigmas = jnp.asarray(schedule.sd3_sigmas(num_steps, shift))
    return _sd3_sample(self, cfg_scale != 1.0, params, self.decode_constants(), fields, jnp.asarray(va, jnp.float32),
                       x_init, sigmas, jnp.float32(cfg_scale))

  def generate_uint8(self, params, prompts, va, *, seed: int, batch_size: int, num_steps: int, shift: float,
                     cfg_scale: float, progress: bool = False, noise_ids=None) -> np.ndarray:
    """uint8 images; row i from the noise of fold_in(key(seed), noise_ids[i]) whatever the batching."""
    key = jax.random.key(seed)
    noise_ids = np.arange(len(prompts)) if noise_ids is None else np.asarray(noise_ids)
    va = np.asarray(va, np.float32)
    out = []
    for start in range(0, len(prompts), batch_size):
      idx = np.arange(start, min(start + batch_size, len(prompts)))
      x_init = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), self.image_shape))(
          jnp.asarray(noise_ids[idx], jnp.uint32))
      images = self._sample_from(params, [prompts[i] for i in idx], va[idx], x_init, num_steps=num_steps,
                                 shift=shift, cfg_scale=cfg_scale)
      out.append(to_uint8(np.asarray(images)))
    return np.concatenate(out)

  def export(self, directory, params, dtype=np.float32, lora=None, transformer_trained: bool = False):
    """The emotion group (+ LoRA adapters `(adapters, LoRAConfig)` in diffusers' layout, + the whole transformer
    in diffusers' layout when it was trained) beside the name of the base pipeline."""
    config = {"kind": SD3_KIND, "pipeline": self.pipeline_dir, "emotion_tokens": self.emotion_tokens,
              "emotion_hidden": self.emotion_hidden, "resolution": self.image_size}

    def more(tmp):
      if lora is not None:
        lora_lib.save(os.path.join(tmp, LORA_FILE), lora[0], lora[1])
      if transformer_trained:
        state = {k: np.asarray(v, dtype) for k, v in mmdit.to_diffusers_state_dict(params["transformer"]).items()}
        hf_weights.write_pretrained(os.path.join(tmp, "transformer"), "diffusion_pytorch_model", state,
                                    {**tiny.DIFFUSERS_TRANSFORMER, **self.pipe.transformer.config.to_dict()})
    assets.save(directory, {"emotion": params["emotion"]}, config, dtype=dtype, write_more=more)


CLIP_LENGTH = 77  # SD3's CLIP tokenizers' model_max_length


class AbstractSD3Pipeline:
  """What SD3Policy uses of an SD3Pipeline with weight shapes in place of weights (ShapeDtypeStruct leaves), for
  planning memory without a checkpoint (emojax.plan): an MMDiT config and a VAE config (default SD3's)."""

  def __init__(self, transformer_config: mmdit.MMDiTConfig, vae_config=None, dtype=jnp.float32, shift: float = 3.0):
    vae_config = vae_config or vae_lib.VAEConfig()
    self.transformer = mmdit.MMDiT(transformer_config, dtype=dtype, param_dtype=jnp.float32)
    self.transformer_params = mmdit.param_shapes(transformer_config)
    self.vae = vae_lib.AutoencoderKL(vae_config, dtype=dtype)
    side = 8 * len(vae_config.block_out_channels)  # any side the VAE's downsampling divides
    self.vae_params = jax.eval_shape(self.vae.init, jax.random.key(0), jnp.zeros((1, side, side, 3)))["params"]
    self.shift, self.vae_scale_factor = shift, vae_config.downsample_factor
    self.default_size = transformer_config.sample_size * self.vae_scale_factor

  def encode_prompt(self, prompts, max_sequence_length: int = 256):
    raise ValueError("an abstract SD3 pipeline has no text encoders (it plans memory; load a pipeline directory)")

  def context_length(self, max_sequence_length: int) -> int:
    return CLIP_LENGTH + max_sequence_length  # SD3.5's three encoders: CLIP-L/G states, then T5's


def _exported_transformer(directory: str, base_params):
  """An export's transformer: its own `transformer/` if it has one, else the base pipeline's, plus its LoRA."""
  params = base_params
  if os.path.isdir(os.path.join(directory, "transformer")):
    _, params = mmdit.from_pretrained(os.path.join(directory, "transformer"), param_dtype=jnp.float32)
  lora_path = os.path.join(directory, LORA_FILE)
  if os.path.isfile(lora_path):
    adapters, config = lora_lib.load(lora_path, params)
    params = jax.device_get(lora_lib.merge(params, adapters, config))
  return params


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sd3_sample(policy: SD3Policy, cfg: bool, params, constants, fields, va, x_init, sigmas, guidance_scale):
  cond = policy.add_emotion(params, fields["text"], va)
  uncond = policy.add_emotion(params, fields["text_uncond"], va, jnp.zeros(va.shape[:1])) if cfg else None
  fn = cfg_velocity(lambda x, s, c: policy.velocity(params, x, s, c), cond, uncond, guidance_scale if cfg else None)
  x, _ = rollout(fn, x_init, sigmas, jax.random.key(0), noise_level=0.0, method="ode", with_logprob=False)
  return policy.decode(constants, x)
