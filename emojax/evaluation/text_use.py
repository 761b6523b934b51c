"""Probes of which prompt words a tiny-world generator uses: the flow-matching loss under prompts with one kind
of word edited, and which shape kind it draws for each kind named (`tools/probe_text_use.py`)."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from emojax.data import emoshapes
from emojax.evaluation import layout
from emojax.pipelines import tiny


def edited_prompts(prompts, seed: int = 0) -> dict[str, list[str]]:
  """EmoShapes prompts as written and with one kind of word edited, to see which words a generator uses."""
  rng = np.random.default_rng(seed)
  shape_re = re.compile(r"\b(" + "|".join(emoshapes.SHAPES) + r")\b")
  other = lambda seq, x: seq[(seq.index(x) + rng.integers(1, len(seq))) % len(seq)]
  return {
      "correct": list(prompts),
      "places_moved": [layout.PLACE_RE.sub(lambda m: other(emoshapes.PLACES, m.group(0)), p) for p in prompts],
      "shapes_swapped": [shape_re.sub(lambda m: other(emoshapes.SHAPES, m.group(0)), p) for p in prompts],
      "background_only": ["a shape" + "".join(p.rpartition(emoshapes.BACKGROUND_PREFIX)[1:]) for p in prompts],
      "empty": [""] * len(prompts),
  }


def text_use_losses(gen, gcfg, params, examples, sigmas, key=None) -> dict[float, dict[str, dict[str, float]]]:
  """Flow-matching loss at each of `sigmas` of EmoShapes examples under each of `edited_prompts` of their
  emotional prompts.

  {sigma: {"all": {edit: loss}, "shapes": {edit: loss on shape pixels only}}}; fixed noise, emotion input zero.
  """
  tok = tiny.tokenizer_for(gcfg)
  x0 = jnp.asarray(np.stack([e["image"] for e in examples]).astype(np.float32) / 127.5 - 1.0)
  on_shape = jnp.asarray(np.stack([e["shape_mask"] for e in examples]), jnp.float32)
  noise = jax.random.normal(jax.random.key(0) if key is None else key, x0.shape)
  n = len(examples)
  conds = {name: tiny.add_emotion(gen, params, tiny.encode_text(gen, params, tok(p)), jnp.zeros((n, 2)), None)
           for name, p in edited_prompts([e["emotional_prompt"] for e in examples]).items()}
  out = {}
  for sigma in sigmas:
    x_t = (1.0 - sigma) * x0 + sigma * noise
    out[sigma] = {"all": {}, "shapes": {}}
    for name, cond in conds.items():
      err = jnp.mean((tiny.apply_velocity(gen, params, x_t, jnp.full((n,), sigma), cond) - (noise - x0)) ** 2, -1)
      out[sigma]["all"][name] = float(jnp.mean(err))
      out[sigma]["shapes"][name] = float(jnp.sum(on_shape * err) / jnp.sum(on_shape))
  return out


def kind_confusion(gen, gcfg, params, *, per_cell: int = 2, num_steps: int = 20, cfg_scale: float = 3.0,
                   shift: float = 3.0, seed: int = 0) -> np.ndarray:
  """`layout.kind_confusion` of ODE samples of "a <kind> <place>", every kind in every cell `per_cell` times."""
  prompts = [f"a {k} {p}" for k in emoshapes.SHAPES for p in emoshapes.PLACES for _ in range(per_cell)]
  tok = tiny.tokenizer_for(gcfg)
  n = len(prompts)
  images = tiny.generate(gen, params, tok(prompts), tok([""] * n), jnp.zeros((n, 2)), jax.random.key(seed),
                         num_steps=num_steps, shift=shift, cfg_scale=cfg_scale, method="ode")
  return layout.kind_confusion(jax.device_get(images), prompts)
