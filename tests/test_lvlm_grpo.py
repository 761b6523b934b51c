"""LVLM GRPO: the on-policy ratio, exact gradient accumulation in both aggregation modes, the loss masks,
the k3 KL, and a smoke run through the trainer that logs the reward components and exports."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lvlm as lvlm_config
from emojax import optim, trainer
from emojax.tasks import make_task
from emojax.rl import grpo, lvlm_step
from emojax.lvlm import judge
from emojax.tasks.lvlm_grpo import LVLMGRPO

COMPONENTS = ("reward/format", "reward/valence", "reward/arousal", "reward/category")


class _SpreadRewards(LVLMGRPO):
  """A random judge never writes a parsable answer: every multitask reward is 0, every advantage 0 and the
  policy gradient empty. A bonus read off each answer's first byte gives the groups a spread."""

  def score(self, rows, raw):
    out = super().score(rows, raw)
    out["rewards"] = out["rewards"] + (np.asarray(rows["tokens"])[:, 0] % 7).astype(np.float32) / 7
    return out


@pytest.fixture(scope="module")
def smoke(tiny_export, tmp_path_factory):
  config = lvlm_config.get_config("smoke")
  config.unlock()
  config.model.pretrained = tiny_export
  config.mesh.num_devices = 1
  config.total_steps, config.eval_every = 3, 3
  config.optim.learning_rate = 1e-3
  config.rescore_old = False  # the ratio's old log-probs are the sampler's own: ratio 1 is then a real check
  workdir = tmp_path_factory.mktemp("grpo")
  task = _SpreadRewards(config)
  result = trainer.run(config, str(workdir), task, progress=False)
  return config, workdir, task, result


def test_smoke_run_logs_rewards_and_exports(smoke):
  config, workdir, task, result = smoke
  print("lvlm grpo smoke step times", [round(m["step_time_s"], 2) for m in result.metrics])
  assert result.step == 3 and all(np.isfinite(m["loss"]) for m in result.metrics)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3]
  for k in (*COMPONENTS, "reward_mean", "reward_std", "zero_std_ratio", "ratio_dev_first", "ratio_mean",
            "clip_frac_high", "clip_frac_low", "approx_kl", "kl", "loss", "grad_norm", "completion_len"):
    assert all(k in l for l in lines), k
  assert lines[0]["reward_std"] > 0 and lines[0]["zero_std_ratio"] < 1  # the spread reached the advantages
  _, _, params, _ = judge.load_lvlm(str(workdir / "export"))
  final = jax.device_get(result.state["params"])
  jax.tree.map(np.testing.assert_array_equal, params, final)
  # the logged evaluation is the final judge's, scored independently here
  want = judge.evaluate(task.model, params, task.processor, task.eval_split, batch_size=config.eval.batch_size,
                        max_prompt_len=config.max_prompt_len, max_new_tokens=config.max_new_tokens)
  for k in ("valence_mae", "arousal_mae", "category_acc", "format_rate"):
    assert lines[-1][f"eval/{k}"] == pytest.approx(want[k], abs=1e-6), k
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), final, task._pretrained)
  assert max(jax.tree.leaves(moved["language_model"])) > 0
  assert max(jax.tree.leaves(moved["visual"])) == 0  # model.frozen = ("visual",)


def test_on_policy_ratio_is_one(smoke):
  """inner_epochs = 1, old log-probs from the KV-cache sampler at temperature 0.7: the training scorer (one
  uncached forward, same temperature) gives a ratio of 1 to float rounding on every step. Scoring at
  temperature 1 would put it off by ~0.3 per token (the sampler reports log_softmax(logits / 0.7))."""
  config, _, _, result = smoke
  assert config.temperature == 0.7
  devs = [m["ratio_dev_first"] for m in result.metrics]
  assert max(devs) <= 1e-5, devs


def test_rescore_old_takes_the_scorer_and_logs_the_sampler_gap():
  """With rescore_old the ratio's old log-probs are the scorer's re-scoring (off-policy old log-probs given
  by the sampler, shifted by 0.3 nats, are replaced: nothing is clipped) and their gap is logged."""
  hp = lvlm_step.LVLMHyper(group_size=G, clip_eps=0.2, kl_beta=0.0, aggregation="token_mean", grad_accum=2,
                           inner_epochs=1, rescore_old=True)
  tx = optax.sgd(0.5)
  params, _, batch = _toy_problem()
  exact = _toy_logprobs(params, batch, batch["tokens"], batch["completion_mask"])
  batch["old_logprobs"] = np.where(batch["completion_mask"] > 0, np.asarray(exact) + 0.3, 0.0).astype(np.float32)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  _, m = jax.jit(lvlm_step.make_train_step(logprob_fn=_toy_logprobs, optimizer=tx, hp=hp))(state, batch, None, {})
  assert float(m["sampler_logprob_dev"]) == pytest.approx(0.3, abs=1e-5)
  assert float(m["ratio_dev_first"]) <= 1e-6 and float(m["clip_frac_high"] + m["clip_frac_low"]) == 0.0


def test_kl_zero_at_reference_positive_after(smoke):
  """Step 1 scores with the reference's own weights: k3 = 0 (up to the two forwards' rounding, d²/2 ~ 1e-13).
  After an update the policy has left the reference and k3 is positive."""
  _, _, _, result = smoke
  kl = [m["kl"] for m in result.metrics]
  assert 0 <= kl[0] < 1e-9 and kl[2] > 1e-9


def test_k3_kl_zero_iff_reference():
  rng = np.random.default_rng(0)
  lp = jnp.asarray(-rng.uniform(0.1, 3, (3, 5)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
  adv = jnp.asarray([1.0, -0.5, 0.2])
  kw = dict(clip_eps=0.2, kl_beta=0.04, aggregation="token_mean")
  _, st = lvlm_step.token_loss(lp, lp, lp, adv, mask, **kw)
  assert float(st["kl"]) == 0.0
  ref = lp + jnp.asarray(rng.normal(0, 0.5, lp.shape), jnp.float32)
  _, st = lvlm_step.token_loss(lp, lp, ref, adv, mask, **kw)
  d = np.asarray(ref - lp, np.float64)[np.asarray(mask) > 0]
  assert float(st["kl"]) > 0
  np.testing.assert_allclose(float(st["kl"]), np.mean(np.expm1(d) - d), rtol=1e-5)


# ------------------------------------------------------------------------------ accumulation invariance

V, B, G, T, L = 7, 4, 3, 6, 3  # vocabulary, prompts, samples per prompt, completion and prompt lengths


def _toy_logprobs(params, prompts, tokens, mask):
  """A policy cheap to compile that still reads its prompt (token and pixels): if micro-batches paired
  completions with the wrong prompts, the accumulated update would differ from the one-step update."""
  g = tokens.shape[0] // prompts["input_ids"].shape[0]
  ctx = params["u"][prompts["input_ids"][:, 0]] + params["frozen"]["w"] * prompts["pixel_values"].mean((1, 2))[:, None]
  prev = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :-1]], 1)
  logits = params["a"][prev] + jnp.repeat(ctx, g, 0)[:, None, :]
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[..., None], -1)[..., 0]
  return jnp.where(mask > 0, lp, 0.0)


def _toy_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"a": rng.normal(0, 1, (V, V)), "u": rng.normal(0, 1, (V, V)), "frozen": {"w": rng.normal(0, 1, (V,))}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  # the reference differs in the trainable groups; frozen groups are shared with the policy
  ref = jax.tree.map(lambda x: x + 0.3 * jnp.asarray(rng.normal(0, 1, x.shape), jnp.float32), params)
  ref["frozen"] = params["frozen"]
  # ragged, and unequal between micro-batches: prompts 0 and 2 hold 4 + 6 tokens, prompts 1 and 3 hold 17 + 15
  lengths = np.array([1, 2, 1, 6, 5, 6, 3, 1, 2, 4, 6, 5])
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  tokens = np.where(mask > 0, rng.integers(1, V, (B * G, T)), 0).astype(np.int32)
  batch = {"input_ids": rng.integers(0, V, (B, L)).astype(np.int32), "attention_mask": np.ones((B, L), np.int32),
           "pixel_values": rng.normal(0, 1, (B, 2, 3)).astype(np.float32), "tokens": tokens, "completion_mask": mask,
           "rewards": rng.normal(0, 1, (B * G,)).astype(np.float32)}
  # old log-probs off-policy by ~0.3 nats, so some ratios leave [1 - eps, 1 + eps] and are clipped
  old = _toy_logprobs(params, batch, tokens, mask) + rng.normal(0, 0.3, (B * G, T))
  batch["old_logprobs"] = np.where(mask > 0, old, 0.0).astype(np.float32)
  return params, ref, batch


def _toy_step(aggregation, grad_accum, inner_epochs=1):
  hp = lvlm_step.LVLMHyper(group_size=G, clip_eps=0.2, kl_beta=0.1, aggregation=aggregation, grad_accum=grad_accum,
                           inner_epochs=inner_epochs, frozen=("frozen",))
  tx = optax.sgd(0.5)
  step = jax.jit(lvlm_step.make_train_step(logprob_fn=_toy_logprobs, optimizer=tx, hp=hp))
  params, ref, batch = _toy_problem()
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optim.init_opt_state(tx, params, ("frozen",))}
  new, metrics = step(state, batch, jax.random.key(0), {"ref_trainable": optim.partition(ref, ("frozen",))[0]})
  return params, ref, batch, new["params"], jax.device_get(metrics)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean"])
def test_grad_accumulation_is_exact(aggregation):
  """SGD, so the update is lr·gradient with nothing adaptive: 1 and 2 micro-batches give the same
  parameters (after 2 inner epochs, i.e. 2 updates) and first-epoch metrics to float32 rounding
  (rtol 1e-5, atol 1e-6 on O(1) values)."""
  params, ref, batch, one, m1 = _toy_step(aggregation, 1, inner_epochs=2)
  # the one-step loss is the whole-batch aggregate (the definition the accumulation must reproduce)
  adv, _ = grpo.group_advantages(batch["rewards"], G)
  ref_lp = _toy_logprobs(ref, batch, batch["tokens"], batch["completion_mask"])
  lp = _toy_logprobs(params, batch, batch["tokens"], batch["completion_mask"])
  whole, _ = lvlm_step.token_loss(lp, batch["old_logprobs"], ref_lp, adv, batch["completion_mask"], clip_eps=0.2,
                                  kl_beta=0.1, aggregation=aggregation)
  np.testing.assert_allclose(m1["loss"], whole, rtol=0, atol=1e-6)  # a near-cancelling sum: absolute
  assert 0 < m1["clip_frac_high"] + m1["clip_frac_low"] < 1
  for n in (2,):
    _, _, _, acc, mn = _toy_step(aggregation, n, inner_epochs=2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one, acc)
    for k in ("loss", "kl", "ratio_mean", "clip_frac_high", "clip_frac_low", "approx_kl", "grad_norm"):
      np.testing.assert_allclose(mn[k], m1[k], rtol=1e-5, atol=1e-7, err_msg=f"{k} at grad_accum={n}")
  np.testing.assert_array_equal(one["frozen"]["w"], params["frozen"]["w"])
  assert np.abs(np.asarray(one["a"] - params["a"])).max() > 1e-3


def test_naive_micro_batch_means_would_differ():
  """Why the global normalisation: with ragged masks the mean of per-micro-batch token means is not the
  batch's token mean (so the invariance above is not vacuous)."""
  _, _, batch = _toy_problem()
  per_token = jnp.broadcast_to(jnp.arange(T, dtype=jnp.float32), batch["tokens"].shape)  # later tokens cost more
  mask = jnp.asarray(batch["completion_mask"])
  whole = grpo.aggregate_token_loss(per_token, mask, "token_mean")
  halves = lvlm_step.split_micro({"x": per_token, "m": mask}, 2, G)
  naive = np.mean([grpo.aggregate_token_loss(halves["x"][i], halves["m"][i], "token_mean") for i in range(2)])
  assert abs(float(naive) - float(whole)) > 0.1


# ------------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean"])
def test_masked_positions_never_reach_the_loss(aggregation):
  """Log-probs over prompt + completion with the prompt and the padding masked: anything there (even inf
  and nan) changes neither the loss nor its gradient."""
  rng = np.random.default_rng(2)
  n, s, p = 4, 9, 3  # rows, positions, prompt positions
  mask = np.zeros((n, s), np.int32)
  for i, length in enumerate([2, 6, 1, 4]):
    mask[i, p:p + length] = 1
  lp, old, ref = (jnp.asarray(-rng.uniform(0.1, 2, (n, s)), jnp.float32) for _ in range(3))
  adv = jnp.asarray([1.0, -1.0, 0.5, 2.0])
  fn = jax.jit(jax.value_and_grad(lambda lp, old, ref: lvlm_step.token_loss(
      lp, old, ref, adv, mask, clip_eps=0.2, kl_beta=0.04, aggregation=aggregation)[0]))
  loss, grad = fn(lp, old, ref)
  junk = jnp.asarray(rng.choice([np.inf, -np.inf, np.nan, 50.0, -50.0], (n, s)), jnp.float32)
  off = mask == 0
  loss2, grad2 = fn(jnp.where(off, junk, lp), jnp.where(off, junk[::-1], old), jnp.where(off, -junk, ref))
  assert float(loss2) == float(loss) and np.isfinite(float(loss))
  np.testing.assert_array_equal(grad2, grad)
  assert (np.asarray(grad)[off] == 0).all() and (np.asarray(grad)[~off] != 0).any()


def test_prompt_and_padding_tokens_do_not_move_the_model_loss(smoke):
  """With the real model: prompt padding ids and completion padding tokens leave the loss as it is; a real
  completion token changes it."""
  config, _, task, _ = smoke
  from emojax.data import emoshapes
  images = np.stack([emoshapes.make_example(7, i)["image"] for i in range(2)])
  batch = task.host_batch({"image": images})
  rng = np.random.default_rng(3)
  mask = (np.arange(8)[None] < np.array([3, 8, 5, 1])[:, None]).astype(np.int32)
  batch["tokens"] = np.where(mask > 0, rng.integers(3, 259, (4, 8)), task.processor.pad_id).astype(np.int32)
  batch["completion_mask"] = mask
  old = np.where(mask > 0, -rng.uniform(0.5, 5, (4, 8)), 0.0).astype(np.float32)
  adv = jnp.asarray([1.0, -1.0, 0.5, -0.5])
  params = task._pretrained

  @jax.jit
  def loss_fn(b):
    lp = task.logprobs(params, b, b["tokens"], b["completion_mask"])
    return lvlm_step.token_loss(lp, old, old, adv, b["completion_mask"], clip_eps=0.2, kl_beta=0.04,
                                aggregation="sequence_mean")[0]

  base = float(loss_fn(batch))

  def changed(key, where):
    b = {k: v.copy() for k, v in batch.items()}
    b[key][where] = 100  # an ordinary byte token
    return float(loss_fn(b))

  prompt_pad = np.nonzero(batch["attention_mask"] == 0)
  completion_pad = np.nonzero(mask == 0)
  assert len(prompt_pad[0]) and len(completion_pad[0])
  assert changed("input_ids", prompt_pad) == pytest.approx(base, abs=1e-6)
  assert changed("tokens", completion_pad) == pytest.approx(base, abs=1e-6)
  assert abs(changed("tokens", (np.array([1]), np.array([2]))) - base) > 1e-4


def test_missing_pretrained_names_the_sft_command(tmp_path):
  config = lvlm_config.get_config("smoke")
  config.model.pretrained = str(tmp_path / "no_judge")
  with pytest.raises(FileNotFoundError, match="no_judge does not exist; make one with .*configs/sft_lvlm.py"):
    make_task(config)


def test_lora_on_the_decoder_trains_only_the_adapters_and_exports_merged(tiny_export, tmp_path):
  """model.lora on q/k/v/o and the MLP with both towers frozen: the optimizer holds the adapters alone, a
  step is on-policy (the sampler and the scorer both run the adapted decoder) and moves only the adapters,
  and the export is the merged judge."""
  from emojax.models import lora as lora_lib
  config = lvlm_config.get_config("smoke")
  config.unlock()
  config.model.pretrained, config.mesh.num_devices, config.total_steps, config.eval_every = tiny_export, 1, 1, 1
  config.model.frozen, config.model.lora.rank, config.model.lora.alpha = ("visual", "language_model"), 2, 4.0
  config.optim.learning_rate, config.rescore_old = 1e-2, False
  task = _SpreadRewards(config)
  assert set(jax.eval_shape(task.init_state, jax.random.key(0))["opt_state"][1][0].mu) == {"lora"}
  result = trainer.run(config, str(tmp_path), task, progress=False)
  (m,), final = result.metrics, jax.device_get(result.state["params"])
  assert m["ratio_dev_first"] < 1e-5 and m["grad_norm"] > 0
  jax.tree.map(np.testing.assert_array_equal, final["language_model"], task._pretrained["language_model"])
  assert max(np.abs(b["lora_B"]).max() for b in jax.tree.leaves(
      final["lora"], is_leaf=lambda v: isinstance(v, dict) and "lora_B" in v)) > 0
  _, _, exported, _ = judge.load_lvlm(str(tmp_path / "export"))
  merged = lora_lib.merge(final["language_model"], final["lora"], task.lora)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), exported["language_model"], merged)


def _qwen25vl_7b_on(tiny_export, **over):
  """The qwen25vl_7b preset on the 2-layer random export, at the tiny world's image size and lengths."""
  config = lvlm_config.get_config("qwen25vl_7b")
  config.unlock()
  config.model.pretrained, config.mesh.num_devices = tiny_export, 1
  config.data.image_size, config.max_prompt_len, config.max_new_tokens = 32, 120, 24
  config.images_per_step, config.group_size, config.grad_accum = 2, 4, 2
  config.total_steps, config.eval_every, config.eval.num_examples, config.eval.batch_size = 2, 2, 2, 2
  config.eval.at_start, config.optim.warmup_steps, config.optim.learning_rate = False, 0, 1e-3
  for k, v in over.items():
    setattr(config, k, v) if "." not in k else setattr(config[k.split(".")[0]], k.split(".")[1], v)
  return config


def test_qwen25vl_7b_preset_without_its_directory_is_one_line():
  with pytest.raises(ValueError, match="needs --config.model.pretrained=DIR: a transformers Qwen2.5-VL directory"):
    make_task(lvlm_config.get_config("qwen25vl_7b"))


def test_qwen25vl_7b_preset_steps_in_bf16_on_policy(tiny_export, tmp_path):
  """bf16 compute with float32 trainable params (the frozen vision tower is stored in bf16): the ratio's old
  log-probs are the training scorer's (rescore_old), so the first epoch is on-policy; the KV-cache sampler's bf16
  log-probs are logged beside it (sampler_logprob_dev)."""
  config = _qwen25vl_7b_on(tiny_export)
  result = trainer.run(config, str(tmp_path), _SpreadRewards(config), progress=False)
  for m in result.metrics:
    assert np.isfinite(m["loss"]) and m["ratio_dev_first"] <= 1e-5 and np.isfinite(m["sampler_logprob_dev"])
  params = jax.device_get(result.state["params"])
  frozen = tuple(config.model.frozen)
  assert {a.dtype for k in params if k not in frozen for a in jax.tree.leaves(params[k])} == {np.dtype(np.float32)}
  assert {a.dtype for k in frozen for a in jax.tree.leaves(params[k])} == {np.dtype(jnp.bfloat16)}
  print("bf16 sampler_logprob_dev", [m["sampler_logprob_dev"] for m in result.metrics])
