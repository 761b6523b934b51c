"""Supervised fine-tuning of the Qwen2.5-VL judge on EmoShapes (produces the tiny LVLM).

Teacher forcing on the judge question with the image -> the canonical answer (layout and target
text: `lvlm_common`). This is what gives the tiny judge its answer format and a first reading of
colour before LVLM GRPO sharpens it with multi-task rewards; the loss is the mean cross-entropy
over answer tokens only. Every eval_every steps the judge answers a held-out EmoShapes split
greedily, scored against the colour judge's labels and the predict-the-mean baseline.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emojax import config_utils
from emojax.models import assets
from emojax.tasks import lvlm_common as common


class SFTLVLM:
  progress_keys = ("loss", "token_acc", "eval/valence_mae", "eval/format_rate")

  def __init__(self, config):
    self.config = c = config
    self.model, self.qcfg, self._pretrained, self.processor = common.make_model(c.model)
    self.global_batch_size = c.batch_size
    need = common.max_target_tokens(self.processor)
    if c.target_len < need:
      raise ValueError(f"target_len={c.target_len} is below the longest SFT answer ({need} tokens)")
    self.grid = common.image_grid(self.processor, c.data.image_size, c.batch_size)
    self.tx = config_utils.make_optimizer(c.optim, c.total_steps)
    self.eval_split = common.eval_split(c.eval.seed, c.eval.num_examples, c.data.image_size)

  def make_loader(self, shard_index, shard_count):
    return common.image_loader(self.config.data, batch_size=self.global_batch_size, seed=self.config.seed,
                               shard_index=shard_index, shard_count=shard_count)

  def host_batch(self, raw):
    return common.sft_batch(self.processor, raw, self.config.max_prompt_len, self.config.target_len)

  def _params(self, rng):
    if self._pretrained is None:
      return common.init_params(self.qcfg, rng, self.config.model.init_std)
    return jax.tree.map(jnp.asarray, self._pretrained)

  def init_state(self, rng):  # the trainer jits it (random init) or only takes its shapes (pretrained)
    params = self._params(rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}

  def initial_state(self, rng, shardings):
    if self._pretrained is None:
      return jax.jit(self.init_state, out_shardings=shardings)(rng)
    params = jax.device_put(jax.tree.map(jnp.asarray, self._pretrained), shardings["params"])
    opt_state = jax.jit(self.tx.init, out_shardings=shardings["opt_state"])(params)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}

  def constants(self):
    return {}

  def train_step(self, state, batch, rng, constants):
    def loss_fn(p):
      logits = common.target_logits(self.model, p, batch, self.grid)
      return common.sft_loss(logits, batch["target_ids"], batch["target_mask"])

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return ({"step": state["step"] + 1, "params": params, "opt_state": opt_state},
            {"loss": loss, "token_acc": acc, "grad_norm": optax.tree.norm(grads)})

  def evaluate(self, params) -> dict[str, float]:
    c = self.config
    m = common.evaluate(self.model, params, self.processor, self.eval_split, batch_size=c.eval.batch_size,
                        max_prompt_len=c.max_prompt_len, max_new_tokens=c.target_len)
    return {f"eval/{k}": v for k, v in m.items() if isinstance(v, float)}  # the baseline too, to read beside it

  def on_step_end(self, step, state, metrics, workdir):
    c = self.config
    if step % c.eval_every == 0 or step == c.total_steps:
      return self.evaluate(state["params"])
    return {}

  def on_finish(self, state, workdir):
    """Exports params + model config (emojax/models/assets layout) to <workdir>/export, which
    `python -m emojax.evaluate --config.lvlm=` and LVLM GRPO's model.pretrained read."""
    params = jax.device_get(state["params"])
    assets.save(os.path.join(workdir, "export"), params, self.qcfg.to_dict(), dtype=np.dtype(self.config.export_dtype))
