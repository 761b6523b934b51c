"""One LVLM GRPO update as pure functions: token-level clipped loss + β·k3 KL to the frozen reference
(docs/design.md), gradients accumulated over micro-batches so that the split never changes the update.

Layout. A step's batch holds B prompts (input_ids, attention_mask (B, L), pixel_values (B, P, D)) and
their N = B·G sampled completions, rows b·G + g as `emojax.lvlm.sampling.sample` returns them:
tokens, old_logprobs, completion_mask (N, T), rewards (N,). Micro-batch i holds prompts i, i + n,
i + 2n, ... with their G completions each: strided rather than contiguous, so when the mesh shards the
batch axis every micro-batch is spread over all devices instead of living on a few of them.

Exact accumulation. `aggregate_token_loss` is a mean over the whole batch, and a mean of micro-batch
means is not a whole-batch mean once micro-batches hold different numbers of tokens (token_mean: a
micro-batch of short answers would weigh as much as one of long answers). So each micro-batch's
aggregate is weighted by its share of the batch's count — tokens for "token_mean", sequences for
"sequence_mean" — and the weighted losses and their gradients are summed, not averaged. The sum is the
whole-batch loss up to float rounding for any split (tests/test_lvlm_grpo.py holds it to that). The
token-level statistics (ratio mean, clip fractions, approx KL) are combined with token shares the same
way, so they too are whole-batch masked means.

Masks. Only completion tokens up to and including the end of turn carry loss; prompt tokens are never
scored, and padded completion slots are zeroed (`jnp.where`, not a multiply) before any exp, so
whatever the scorer puts there — even inf — reaches neither the loss nor its gradient.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from emojax import optim, parallel
from emojax.rl import grpo

PROMPT_KEYS = ("input_ids", "attention_mask", "pixel_values")  # one row per prompt
AGGREGATIONS = ("sequence_mean", "token_mean")
_TOKEN_STATS = ("ratio_mean", "clip_frac_high", "clip_frac_low", "approx_kl")


@dataclasses.dataclass(frozen=True)
class LVLMHyper:
  group_size: int  # G completions per prompt
  clip_eps: float  # token-level PPO clip range
  kl_beta: float  # weight of the k3 KL to the reference (0: no reference forward at all)
  aggregation: str  # "sequence_mean" | "token_mean"
  grad_accum: int  # micro-batches per optimizer update
  inner_epochs: int  # optimizer updates per sampled batch
  adv_eps: float = 1e-4  # std floor in group advantages
  adv_clip: float = 5.0  # advantages clipped to ±adv_clip
  frozen: tuple = ()  # top-level parameter groups kept out of the gradient (split off, never differentiated)
  rescore_old: bool = False  # old log-probs re-scored by the training scorer (ratio 1 by construction)

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation={self.aggregation!r}; known: {AGGREGATIONS}")


def token_loss(logp, old_logp, ref_logp, advantages, mask, *, clip_eps: float, kl_beta: float, aggregation: str):
  """The GRPO objective of one batch of completions, aggregated over its unmasked tokens.

  logp, old_logp, ref_logp (None: no KL term) and mask are (N, S), advantages (N,). Per token:
  max(−A·ratio, −A·clip(ratio, 1 ± ε)) + β·k3(logp, ref). Returns (loss, stats); stats are masked
  means over this batch's tokens (kl aggregated like the loss) and ratio_max_dev, all stop-gradient.
  """
  m = mask > 0
  logp, old_logp = jnp.where(m, logp, 0.0), jnp.where(m, old_logp, 0.0)
  fmask = m.astype(jnp.float32)
  pg, stats = grpo.clipped_policy_loss(logp, old_logp, advantages, clip_eps, mask=fmask)
  per_token = pg
  if ref_logp is not None:
    kl = grpo.k3_kl(logp, jnp.where(m, ref_logp, 0.0))
    per_token = pg + kl_beta * kl
    stats["kl"] = jax.lax.stop_gradient(grpo.aggregate_token_loss(kl, fmask, aggregation))
  return grpo.aggregate_token_loss(per_token, fmask, aggregation), stats


def counts(mask, aggregation: str):
  """What a loss mean divides by: unmasked tokens ("token_mean") or sequences ("sequence_mean")."""
  return (mask > 0).sum().astype(jnp.float32) if aggregation == "token_mean" else jnp.float32(mask.shape[0])


def split_micro(batch: dict, n: int, group_size: int) -> dict:
  """(B·k, ...) -> (n, B/n·k, ...): micro-batch i holds prompts i, i + n, ... and their k rows each
  (k = 1 for PROMPT_KEYS, G otherwise), groups kept contiguous."""
  def one(key, x):
    k = 1 if key in PROMPT_KEYS else group_size
    if (x.shape[0] // k) % n:
      raise ValueError(f"{x.shape[0] // k} prompts do not split into {n} micro-batches (grad_accum)")
    return parallel.split_rows(x, n, k)
  return {k: one(k, v) for k, v in batch.items()}


def make_train_step(*, logprob_fn: Callable, optimizer: optax.GradientTransformation, hp: LVLMHyper):
  """Builds train_step(state, batch, rng, constants) -> (state, metrics); constants["ref_trainable"] is
  the reference LVLM's trainable groups, combined with the state's frozen groups (absent when
  hp.kl_beta == 0); state["opt_state"] covers the trainable groups.

  logprob_fn(params, prompts, tokens, mask) -> (n·G, T) log-probs of completion tokens at the sampling temperature
  (0 where mask is 0), prompts the PROMPT_KEYS of n prompts; traced once per micro-batch shape.
  batch: PROMPT_KEYS (B rows), tokens, old_logprobs, completion_mask (N, T), rewards (N,).
  """
  n = hp.grad_accum

  def prompts_of(mb):
    return {k: mb[k] for k in PROMPT_KEYS}

  def micro_loss(trainable, frozen, mb, totals):
    """This micro-batch's loss weighted by its share of the batch count (see the module docstring);
    totals = (the aggregation's count, the token count) over the whole batch."""
    lp = logprob_fn(optim.merge(trainable, frozen), prompts_of(mb), mb["tokens"], mb["completion_mask"])
    loss, stats = token_loss(lp, mb["old_logprobs"], mb.get("ref_logprobs"), mb["advantages"], mb["completion_mask"],
                             clip_eps=hp.clip_eps, kl_beta=hp.kl_beta, aggregation=hp.aggregation)
    share = counts(mb["completion_mask"], hp.aggregation) / jnp.maximum(totals[0], 1.0)
    token_share = counts(mb["completion_mask"], "token_mean") / jnp.maximum(totals[1], 1.0)
    out = {k: stats[k] * token_share for k in _TOKEN_STATS}
    out["ratio_dev"] = stats["ratio_max_dev"]
    if "kl" in stats:
      out["kl"] = stats["kl"] * share
    return loss * share, out

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def update(params, opt_state, micro, totals):
    trainable, frozen = optim.partition(params, hp.frozen)

    def acc(g_sum, mb):
      (loss, stats), g = grad_fn(trainable, frozen, mb, totals)
      return jax.tree.map(jnp.add, g_sum, g), (loss, stats)

    g, (losses, stats) = jax.lax.scan(acc, jax.tree.map(jnp.zeros_like, trainable), micro)
    stats = {k: (v.max() if k == "ratio_dev" else v.sum()) for k, v in stats.items()}
    trainable, opt_state, stats["grad_norm"] = optim.apply_gradients(optimizer, g, opt_state, trainable)
    return optim.merge(trainable, frozen), opt_state, losses.sum(), stats

  def score(p, micro):
    """Log-probs of every micro-batch's completions under p, in the loss's micro-batch layout."""
    def one(_, mb):
      return None, logprob_fn(p, prompts_of(mb), mb["tokens"], mb["completion_mask"])
    return jax.lax.stop_gradient(jax.lax.scan(one, None, micro)[1])

  def train_step(state, batch, rng, constants):
    del rng  # the update is deterministic given the sampled batch
    params, opt_state = state["params"], state["opt_state"]
    adv, adv_stats = grpo.group_advantages(batch["rewards"], hp.group_size, hp.adv_eps, hp.adv_clip)
    keys = (*PROMPT_KEYS, "tokens", "old_logprobs", "completion_mask")
    micro = split_micro({**{k: batch[k] for k in keys}, "advantages": adv}, n, hp.group_size)
    metrics = {}
    if hp.rescore_old:
      # The sampler's KV-cache log-probs differ from the scorer's by fp32 rounding (up to ~2e-5 on
      # 150-token answers); the ratio is taken against the scorer, the gap is logged.
      old = score(params, micro)
      on = micro["completion_mask"] > 0
      metrics["sampler_logprob_dev"] = jnp.max(jnp.where(on, jnp.abs(old - micro["old_logprobs"]), 0.0))
      micro["old_logprobs"] = old
    if hp.kl_beta > 0:
      ref_params = optim.merge(constants["ref_trainable"], optim.partition(params, hp.frozen)[1])
      micro["ref_logprobs"] = score(ref_params, micro)
    totals = (counts(batch["completion_mask"], hp.aggregation), counts(batch["completion_mask"], "token_mean"))

    for epoch in range(hp.inner_epochs):
      params, opt_state, loss, stats = update(params, opt_state, micro, totals)
      if epoch == 0:
        metrics["loss"], metrics["ratio_dev_first"] = loss, stats.pop("ratio_dev")
        metrics.update(stats)
    metrics.update(adv_stats)
    return {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return train_step
