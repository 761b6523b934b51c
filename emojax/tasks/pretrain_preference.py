"""The tiny world's PickScore: a CLIP trained from scratch on procedural preference pairs
(`emojax.data.preference_pairs`) with PickScore's objective, exported as a transformers CLIP directory.

Loss per batch of B (caption, preferred, rejected) triples, s(t, i) = exp(logit_scale) · cos(t, i):
  contrastive  CLIP's symmetric cross-entropy over the B x B captions x preferred images;
  preference   PickScore's: cross-entropy of softmax(s(t, preferred), s(t, rejected)) against the
               preference (1, 0);
  iqa          the quality antonym pair ("a clean picture" / "a noisy picture" by default): softmax
               over the pair of s(pair, image) against clean for preferred images and against noisy
               for rejected images with an image fault (prompt faults are clean pictures: left out).
total = contrastive + preference_weight · preference + iqa_weight · iqa. logit_scale is clipped to
ln 100 after each update, as CLIP does.

The tokenizer is a byte-level BPE trained at start-up on the captions of the training world (a pure
function of the config, so a resumed run has the same one) and exported beside the weights.
"""
from __future__ import annotations

import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from emojax import optim, trainer
from emojax.data import emoshapes, pipeline, preference_pairs as pp
from emojax.evaluation import preference as pref_eval
from emojax.io import assets, clip_inputs, clip_tokenizer
from emojax.models import clip as clip_lib
from emojax.models import text_encoder as te
from emojax.rewards.clip_scores import ClipScorer


def model_config(c, vocab_size: int, eos_id: int) -> clip_lib.CLIPConfig:
  m = c.model
  text = te.TextEncoderConfig(vocab_size=vocab_size, hidden_size=m.width, intermediate_size=4 * m.width,
                              num_hidden_layers=m.text_layers, num_attention_heads=m.heads,
                              max_position_embeddings=m.max_text_length, hidden_act="gelu", projection_dim=m.projection_dim,
                              eos_token_id=eos_id, pooling="argmax_ids" if eos_id == 2 else "first_eos")
  vision = clip_lib.VisionConfig(hidden_size=m.width, intermediate_size=4 * m.width, projection_dim=m.projection_dim,
                                 num_hidden_layers=m.vision_layers, num_attention_heads=m.heads,
                                 image_size=c.data.image_size, patch_size=m.patch_size, hidden_act="gelu")
  return clip_lib.CLIPConfig(text=text, vision=vision, projection_dim=m.projection_dim)


def _ce(logits, target):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), target[:, None], -1)[:, 0]


class PretrainPreference:
  progress_keys = ("loss", "pref_acc", "eval/pref_acc_min")

  def __init__(self, config):
    self.config = c = config
    corpus = [t for i in range(c.tokenizer.num_captions) for e in [emoshapes.make_example(c.data.seed, i)]
              for t in (e["prompt"], e["emotional_prompt"])] + list(c.iqa_pair)
    self._tok_dir = tempfile.mkdtemp(prefix="emojax_bpe_")
    hf_tok = clip_tokenizer.train(corpus, c.tokenizer.vocab_size, self._tok_dir, c.model.max_text_length)
    self.tokenizer = clip_inputs.Tokenizer(None, c.model.max_text_length, tokenizer=hf_tok)
    self.clip_config = model_config(c, len(hf_tok), hf_tok.eos_token_id)
    self.model = clip_lib.CLIP(self.clip_config)
    self.image_config = clip_inputs.ImageConfig(c.data.image_size, c.data.image_size, c.data.image_size)
    self.global_batch_size = c.batch_size
    self.tx = optim.make_optimizer(c.optim, c.total_steps)
    self._anchors = self.tokenizer(list(c.iqa_pair))
    self.eval_pairs = pref_eval.held_out_pairs(c.eval.seed, c.eval.per_kind, c.data.image_size)
    self.eval_noise = pref_eval.pure_noise(c.eval.seed, c.eval.per_kind, c.data.image_size)

  def make_loader(self, shard_index, shard_count):
    d = self.config.data
    source = pp.PreferencePairsSource(d.seed, d.num_examples, d.image_size)
    rows = pipeline.per_process(self.global_batch_size, shard_count, "batch_size")
    return pipeline.pairs_loader(source, batch_size=rows, seed=self.config.seed, shard_index=shard_index,
                                 shard_count=shard_count)

  def host_batch(self, raw):
    ids, mask = self.tokenizer([str(t) for t in raw["caption"]])
    return {"input_ids": ids, "attention_mask": mask,
            "preferred": clip_inputs.preprocess(raw["preferred"], self.image_config),
            "rejected": clip_inputs.preprocess(raw["rejected"], self.image_config),
            "image_fault": np.asarray(raw["image_fault"], np.float32)}

  def init_state(self, rng):
    params = clip_lib.init_params(self.clip_config, rng, self.config.model.init_std)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optim.init_opt_state(self.tx, params, ())}

  def constants(self):
    return {}

  def losses(self, params, batch):
    c = self.config
    apply = lambda method, *a: self.model.apply({"params": params}, *a, method=method)
    t = apply(clip_lib.CLIP.text_embeds, batch["input_ids"], batch["attention_mask"])
    good = apply(clip_lib.CLIP.image_embeds, batch["preferred"])
    bad = apply(clip_lib.CLIP.image_embeds, batch["rejected"])
    anchors = apply(clip_lib.CLIP.text_embeds, *map(jnp.asarray, self._anchors))
    scale = jnp.exp(params["logit_scale"])
    b = t.shape[0]
    labels = jnp.arange(b)
    logits = scale * t @ good.T
    contrastive = 0.5 * (_ce(logits, labels).mean() + _ce(logits.T, labels).mean())
    pair = scale * jnp.stack([jnp.sum(t * good, -1), jnp.sum(t * bad, -1)], -1)
    preference = _ce(pair, jnp.zeros(b, jnp.int32)).mean()
    fault = batch["image_fault"]
    iqa_good, iqa_bad = _ce(scale * good @ anchors.T, jnp.zeros(b, jnp.int32)), _ce(scale * bad @ anchors.T, jnp.ones(b, jnp.int32))
    iqa = (iqa_good.sum() + (fault * iqa_bad).sum()) / (b + fault.sum())
    total = contrastive + c.preference_weight * preference + c.iqa_weight * iqa
    return total, {"contrastive": contrastive, "preference": preference, "iqa": iqa,
                   "pref_acc": jnp.mean(pair[:, 0] > pair[:, 1]), "logit_scale": params["logit_scale"]}

  def train_step(self, state, batch, rng, constants):
    (loss, metrics), grads = jax.value_and_grad(self.losses, has_aux=True)(state["params"], batch)
    params, opt_state, metrics["grad_norm"] = optim.apply_gradients(self.tx, grads, state["opt_state"], state["params"])
    params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], math.log(100.0))}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, {"loss": loss, **metrics}

  def scorer(self, params) -> ClipScorer:
    return ClipScorer(self.model, params, self.tokenizer, self.image_config, batch_size=self.config.eval.batch_size)

  def evaluate(self, params) -> dict[str, float]:
    s = self.scorer(jax.device_get(params))
    out = pref_eval.evaluate(s.pickscore, lambda im: s.clip_iqa(im, tuple(self.config.iqa_pair)), self.eval_pairs,
                             self.eval_noise)
    return {f"eval/{k}": v for k, v in out.items()}

  def export(self, state, directory):
    """A transformers CLIP directory (config.json, model.safetensors, tokenizer, preprocessor config)."""
    params = trainer.host_params(state)

    def write(tmp):
      fast = self.tokenizer.tokenizer
      clip_lib.save_pretrained(tmp, self.clip_config, params,
                               {"bos_token_id": fast.bos_token_id, "pad_token_id": fast.pad_token_id})
      self.tokenizer.tokenizer.save_pretrained(tmp)
      self.image_config.save(tmp)
    assets.save_directory(directory, write, is_export=lambda d: os.path.isfile(os.path.join(d, "model.safetensors")))
