"""The GRPO job through the shared trainer: resume equality, sharding equality, error paths."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import generator_config
from emojax import trainer
from emojax.tasks.generator_grpo import GeneratorGRPO


def run(config, workdir, task=None):
  return trainer.run(config, str(workdir), task or GeneratorGRPO(config), progress=False)


def _params(result):
  return jax.tree.map(np.asarray, jax.device_get(result.state["params"]))


def test_sigterm_resume_equals_uninterrupted(tiny_asset, tmp_path):
  config = generator_config(tiny_asset, **{"mesh.num_devices": 1})
  full = run(config, tmp_path / "full")

  task = GeneratorGRPO(config)
  hook = task.on_step_end

  def preempt_at_2(step, state, metrics, workdir):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return hook(step, state, metrics, workdir)

  task.on_step_end = preempt_at_2
  first = run(config, tmp_path / "split", task)
  assert first.preempted and first.step == 2
  second = run(config, tmp_path / "split")
  assert second.step == 4 and not second.preempted
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), _params(full), _params(second))
  # the resumed run's steps 3-4 saw the same data and RNG as the uninterrupted run's
  np.testing.assert_allclose([m["reward_mean"] for m in full.metrics[2:]],
                             [m["reward_mean"] for m in second.metrics], rtol=0, atol=0)
  assert first.metrics[0]["ratio_dev_first"] < 1e-5


@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=8), dict(data=2, fsdp=2, tensor=2)], ids=["fsdp8", "data2_fsdp2_tensor2"])
def test_sharded_step_equals_single_device(tiny_asset, tmp_path, mesh, single_device_step):
  over = {"total_steps": 1, "mesh.num_devices": 8, **{f"mesh.{k}": v for k, v in mesh.items()}, **_ONE_STEP}
  sharded = run(generator_config(tiny_asset, **over), tmp_path / "sharded")
  specs = [str(x.sharding.spec) for x in jax.tree.leaves(sharded.state["params"])]
  for axis in ("fsdp", "tensor"):  # the MMDiT rules (configs/generator.py) shard over every parameter axis
    assert mesh.get(axis, 1) == 1 or any(axis in spec for spec in specs), (axis, set(specs))
  ref_metrics, ref_params = single_device_step
  got = sharded.metrics[0]
  # Reductions run in another order on 8 shards: equal to float32 rounding, not bitwise.
  # The on-policy loss is -mean(A) = 0 up to rounding, compared absolutely: its rounding is that of
  # the advantages, i.e. reward rounding divided by a group's reward std (measured 1e-6 to 1e-5).
  np.testing.assert_allclose(got["loss"], ref_metrics["loss"], rtol=0, atol=5e-5, err_msg="loss")
  for k in ("grad_norm", "reward_mean", "kl", "judge/v_abs_err"):
    np.testing.assert_allclose(got[k], ref_metrics[k], rtol=1e-4, atol=1e-5, err_msg=k)
  # Adam's first step is lr*g/(|g|+eps): with eps=1e-8 a rounding-level change in a tiny g can
  # flip its sign, so both runs use eps=1e-2 (update smooth in g) and lr=1e-2 (updates ~1e-2).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-6), _params(sharded), ref_params)


_ONE_STEP = {"rl.prompts_per_step": 2, "rl.group_size": 4, "optim.eps": 1e-2, "optim.learning_rate": 1e-2}


def test_bf16_step_is_on_policy_and_close_to_fp32(tiny_asset, tmp_path, single_device_step):
  """model.dtype=bfloat16: the forward computes in bf16, params / optimizer / log-probs / loss stay fp32.
  The sampler and the training scorer run the same bf16 forward, so the on-policy ratio stays at 1 to
  float32 rounding (measured 6e-8 on AMD EPYC, where XLA upcasts bf16 dots; tolerance 1e-5, a tenth of
  the clip range); the update follows the fp32 one to bf16 precision (grad norm measured 1% apart)."""
  over = {"total_steps": 1, "mesh.num_devices": 1, "model.dtype": "bfloat16", **_ONE_STEP}
  res = run(generator_config(tiny_asset, **over), tmp_path)
  (m,), (ref, ref_params) = res.metrics, single_device_step
  assert m["ratio_dev_first"] < 1e-5
  np.testing.assert_allclose(m["loss"], ref["loss"], rtol=0, atol=5e-5)
  np.testing.assert_allclose(m["grad_norm"], ref["grad_norm"], rtol=0.05)
  assert m["reward_mean"] != ref["reward_mean"]  # the images did change: bf16 is really in the forward
  params = _params(res)  # the frozen text encoder is stored in bf16 (the compute dtype), the rest stays fp32
  trained = {k: v for k, v in params.items() if k != "text"}
  assert {a.dtype for a in jax.tree.leaves(trained)} == {np.dtype(np.float32)}
  assert {a.dtype for a in jax.tree.leaves(params["text"])} == {np.dtype(jnp.bfloat16)}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b, jnp.bfloat16)), params["text"],
               ref_params["text"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-3), trained,
               {k: ref_params[k] for k in trained})


@pytest.fixture(scope="module")
def single_device_step(tiny_asset, tmp_path_factory):
  over = {"total_steps": 1, "mesh.num_devices": 1, **_ONE_STEP}
  res = run(generator_config(tiny_asset, **over), tmp_path_factory.mktemp("single"))
  return res.metrics[0], _params(res)


def test_batch_the_mesh_cannot_divide_is_a_startup_error(tiny_asset, tmp_path):
  config = generator_config(tiny_asset, **{"mesh.num_devices": 8, "rl.prompts_per_step": 3, "rl.group_size": 2})
  with pytest.raises(ValueError, match="not divisible by mesh data\\*fsdp = 8"):
    run(config, tmp_path)
  assert os.listdir(tmp_path) == []  # nothing written: the check runs before any file is made


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tiny_asset, tmp_path):
  config = generator_config(tiny_asset, **{"mesh.num_devices": 1})
  task = GeneratorGRPO(config)
  step_fn = task.train_step

  def poisoned(state, batch, rng, constants):
    state, metrics = step_fn(state, batch, rng, constants)
    metrics["loss"] = jax.numpy.where(state["step"] >= 3, jax.numpy.nan, metrics["loss"])
    return state, metrics

  task.train_step = poisoned
  with pytest.raises(trainer.NonFiniteLossError, match="at step 3.*last good checkpoint: step 2"):
    run(config, tmp_path, task)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_missing_pretrained_directory_is_one_actionable_line(tmp_path):
  config = generator_config(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="does not exist; make it with `python -m emojax.train"):
    GeneratorGRPO(config)


def test_zero_weight_rewards_are_skipped_and_all_zero_is_an_error(tiny_asset):
  task = GeneratorGRPO(generator_config(tiny_asset, **{"rewards.weights": {"lvlm_emotion": 0.0, "colour_emotion": 1.0}}))
  assert task.host_rewards == {} and task.reward_weights == {"colour_emotion": 1.0}  # the LVLM is not loaded
  with pytest.raises(ValueError, match="every reward weight is 0"):
    GeneratorGRPO(generator_config(tiny_asset, **{"rewards.weights": {"lvlm_emotion": 0.0}}))


def test_out_of_range_targets_are_rejected(tiny_asset):
  task = GeneratorGRPO(generator_config(tiny_asset))
  raw = {"prompt": np.array(["a circle"], object), "valence": np.array([3.5], np.float32),
         "arousal": np.array([0.0], np.float32)}
  with pytest.raises(ValueError, match="valence=3.5 is outside"):
    task.host_batch(raw)


def test_guided_step_is_on_policy(tiny_asset, tmp_path):
  """With classifier-free guidance in rollouts and re-scoring (each sample at its own timesteps): guidance
  changes what the rollout draws (the same noise gives other images than at scale 1), and scoring the
  transitions with the same guided velocity keeps the ratio at 1 (scoring without guidance would not)."""
  over = {"total_steps": 1, "mesh.num_devices": 1, **_ONE_STEP}
  guided, plain = (GeneratorGRPO(generator_config(tiny_asset, **over, **{"rl.cfg_scale": s})) for s in (3.0, 1.0))
  raw = next(iter(guided.make_loader(0, 1)))
  batch = jax.tree.map(jax.numpy.asarray, guided.host_batch(raw))
  rng = jax.random.key(5)
  images = [np.asarray(jax.jit(t.experience)(t.init_state(rng), batch, rng, t.constants())["images"])
            for t in (guided, plain)]
  assert np.abs(images[0] - images[1]).mean() > 1e-2
  res = run(generator_config(tiny_asset, **over, **{"rl.cfg_scale": 3.0}), tmp_path)
  m = res.metrics[0]
  assert np.isfinite(m["loss"]) and m["ratio_dev_first"] < 1e-5 and m["reward_std"] > 0


def test_shared_init_noise_is_one_draw_per_group(tiny_asset):
  """rl.shared_init_noise: the rows of a group start from one noise and still end apart (the SDE steps' noise);
  groups start apart; off, every row starts from its own noise."""
  over = {"mesh.num_devices": 1, "rl.group_size": 4, "rl.prompts_per_step": 2}
  shared, own = (GeneratorGRPO(generator_config(tiny_asset, **over, **{"rl.shared_init_noise": f})) for f in (True, False))
  batch = jax.tree.map(jax.numpy.asarray, shared.host_batch(next(iter(shared.make_loader(0, 1)))))
  rng = jax.random.key(3)
  exp = [jax.device_get(jax.jit(t.experience)(t.init_state(rng), batch, rng, t.constants())) for t in (shared, own)]
  start = [e["traj_x"][:, 0].reshape(2, 4, -1) for e in exp]  # (groups, group_size, pixels)
  assert np.array_equal(start[0], np.broadcast_to(start[0][:, :1], start[0].shape))
  assert np.abs(start[0][0, 0] - start[0][1, 0]).mean() > 0.5
  assert np.abs(start[1][:, 0] - start[1][:, 1]).mean() > 0.5
  images = exp[0]["images"].reshape(2, 4, -1)
  assert np.abs(images[:, 0] - images[:, 1]).mean() > 1e-2


def test_rollout_and_decode_in_chunks_equal_the_whole_batch(tiny_asset):
  """rl.rollout_chunks / rl.decode_chunks bound the rollout's memory by a part of the batch; the trajectory, its
  log-probs and the images are those of the whole-batch rollout (same noise), up to float rounding."""
  over = {"mesh.num_devices": 1, "rl.group_size": 4, "rl.prompts_per_step": 2, "rl.cfg_scale": 3.0}
  whole, parts = (GeneratorGRPO(generator_config(tiny_asset, **over, **chunks)) for chunks in
                  ({}, {"rl.rollout_chunks": 4, "rl.decode_chunks": 2}))
  batch = jax.tree.map(jax.numpy.asarray, whole.host_batch(next(iter(whole.make_loader(0, 1)))))
  rng = jax.random.key(3)
  exp = [jax.device_get(jax.jit(t.experience)(t.init_state(rng), batch, rng, t.constants())) for t in (whole, parts)]
  for k in ("traj_x", "traj_x_next", "traj_log_prob", "images"):
    np.testing.assert_allclose(exp[1][k], exp[0][k], rtol=1e-5, atol=1e-5, err_msg=k)
  with pytest.raises(ValueError, match=r"rl.rollout_chunks=3 does not divide the batch of 8 rows"):
    GeneratorGRPO(generator_config(tiny_asset, **over, **{"rl.rollout_chunks": 3}))


def _update_flops(task):
  """XLA's FLOP estimate of one jitted update (lowered, not compiled), from abstract inputs."""
  rng = jax.random.key(0)
  state = jax.eval_shape(task.init_state, rng)
  constants = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), task.constants())
  raw = next(iter(task.make_loader(0, 1)))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), task.host_batch(raw))
  experience = jax.eval_shape(task.experience, state, batch, rng, constants)
  return jax.jit(task.train_step).lower(state, {**batch, **experience}, rng, constants).cost_analysis()["flops"]


def test_frozen_groups_cost_no_weight_gradients(tiny_asset):
  """With the MMDiT frozen (the default: only the V-A embedding learns) the update computes no MMDiT weight
  gradients and the optimizer holds no state for it, and the KL reference is the trainable group alone."""
  only_emotion = GeneratorGRPO(generator_config(tiny_asset, **{"model.frozen": ("text", "mmdit")}))
  with_mmdit = GeneratorGRPO(generator_config(tiny_asset, **{"model.frozen": ("text",)}))
  adam = lambda task: jax.eval_shape(task.init_state, jax.random.key(0))["opt_state"][1][0]  # (clip, adamw[scale_by_adam, ...])
  assert set(adam(only_emotion).mu) == {"emotion"} and set(adam(with_mmdit).mu) == {"emotion", "mmdit"}
  assert set(only_emotion.constants()["ref_trainable"]) == {"emotion"}
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(only_emotion.constants()))  # host arrays
  frozen, full = _update_flops(only_emotion), _update_flops(with_mmdit)
  print(f"update GFLOP: MMDiT frozen {frozen / 1e9:.3f}, trained {full / 1e9:.3f}")
  # a dense layer's weight gradient costs as much as its input gradient; attention, norms and the
  # rollout-independent rest do not shrink
  assert frozen < 0.9 * full  # measured 0.83; XLA counts FLOPs analytically, so this holds on any CPU


def test_lora_trains_only_the_adapters_and_exports_them_merged_and_in_the_diffusers_layout(tiny_asset, tmp_path):
  """model.lora.rank > 0 with the MMDiT frozen: the optimizer holds the adapters and the V-A embedding only, the
  KL reference is the fresh adapters (B = 0: the pretrained model), a step is on-policy and moves the
  adapters, and the export is the merged generator plus the adapters as a diffusers LoRA file."""
  from emojax.models import lora as lora_lib
  from emojax.pipelines import tiny
  over = {"total_steps": 1, "mesh.num_devices": 1, "model.frozen": ("text", "mmdit"), "model.lora.rank": 2,
          "model.lora.alpha": 4.0, "rl.kl_beta": 0.01, **_ONE_STEP}
  config = generator_config(tiny_asset, **over)
  task = GeneratorGRPO(config)
  assert set(jax.eval_shape(task.init_state, jax.random.key(0))["opt_state"][1][0].mu) == {"emotion", "lora"}
  ref = task.constants()["ref_trainable"]["lora"]
  assert all(not np.any(b["lora_B"]) for b in jax.tree.leaves(ref, is_leaf=lambda v: isinstance(v, dict) and "lora_B" in v))
  res = run(config, tmp_path, task)
  (m,), params = res.metrics, _params(res)
  assert m["ratio_dev_first"] < 1e-5 and m["grad_norm"] > 0
  _, _, pretrained = tiny.load_generator(tiny_asset)
  jax.tree.map(np.testing.assert_array_equal, params["mmdit"], pretrained["mmdit"])  # frozen: untouched
  assert max(np.abs(b).max() for b in jax.tree.leaves(params["lora"]) if b.shape[0] == 2) > 0  # some B moved
  _, _, exported = tiny.load_generator(str(tmp_path / "export"))
  merged = lora_lib.merge(params["mmdit"], params["lora"], task.lora)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), exported["mmdit"], merged)
  reread, cfg = lora_lib.load(str(tmp_path / "export" / "pytorch_lora_weights.safetensors"), params["mmdit"])
  assert (cfg.rank, cfg.alpha) == (2, 4.0)
  jax.tree.map(np.testing.assert_array_equal, reread, params["lora"])
  with pytest.raises(ValueError, match="GRPO needs 0"):
    GeneratorGRPO(generator_config(tiny_asset, **{**over, "model.lora.dropout": 0.1}))


def test_weights_go_from_host_straight_into_their_shardings(tiny_asset):
  """Placing the pretrained state and the reference makes no implicit host-to-device transfer (a
  jnp.asarray of the host tree would: the whole model on one device first) and leaves the weights sharded."""
  config = generator_config(tiny_asset, **{"mesh.num_devices": 8, "mesh.data": 1, "mesh.fsdp": 8, "rl.kl_beta": 0.01})
  task = GeneratorGRPO(config)
  mesh = trainer.parallel.mesh_from_config(config.mesh)
  rules = trainer._rules(config)
  init_rng = jax.random.key(0)
  _, shardings = trainer._abstract_state(task, init_rng, mesh, rules)
  with jax.transfer_guard_host_to_device("disallow"):
    state = trainer.place_initial_state(task, init_rng, shardings)
    constants, _ = trainer.place_constants(task, mesh, rules)
  kernel = state["params"]["mmdit"]["transformer_blocks_0"]["attn"]["to_q"]["kernel"]
  assert kernel.sharding.spec[0] == "fsdp" and kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // 8
  ref = constants["ref_trainable"]["emotion"]["linear_2"]["kernel"]
  assert ref.addressable_shards[0].data.shape[0] == ref.shape[0] // 8


def test_pickscore_reward_and_eval_metrics_are_the_preference_models(tiny_asset, tiny_preference, tmp_path):
  """Both rewards are logged apart, the pickscore reward is the scorer's PickScore / scale of the rollout
  images, and each eval logs the eval grid's scaled PickScore and CLIP-IQA."""
  from emojax.io.images import to_uint8
  from emojax.rewards.clip_scores import ClipScorer
  export = str(tiny_preference[1] / "export")
  config = generator_config(tiny_asset, **{
      "mesh.num_devices": 1, "total_steps": 1, "eval_every": 1, "eval.preference": True,
      "rewards.weights": {"colour_emotion": 1.0, "pickscore": 0.5}, "rewards.pickscore.path": export,
      "rewards.pickscore.scale": 4.0})
  task = GeneratorGRPO(config)
  seen = {}
  score = task.score

  def spy(rows, raw):
    seen["images"], seen["prompts"], seen["out"] = np.asarray(rows["images"]), list(raw["prompt"]), score(rows, raw)
    return seen["out"]

  task.score = spy
  res = run(config, tmp_path, task)
  m = res.metrics[-1]
  scorer = ClipScorer.from_pretrained(export)
  want = scorer.pickscore(to_uint8(seen["images"]), seen["prompts"]) / 4.0
  np.testing.assert_allclose(seen["out"]["reward/pickscore"], want, rtol=1e-5, atol=1e-5)
  assert m["reward/pickscore"] == pytest.approx(float(want.mean()), abs=1e-4) and "reward/colour_emotion" in m
  grid = to_uint8(jax.device_get(task.eval_set.sample(res.state["params"])))
  pick = scorer.pickscore(grid, task.eval_set.prompts) / 4.0
  assert m["eval/pickscore"] == pytest.approx(float(pick.mean()), abs=1e-4)
  cells = pick.reshape(-1, task.eval_set.ncol).mean(0)  # prompt-major rows, one column per V-A target
  assert m["eval/pickscore_min_cell"] == pytest.approx(float(cells.min()), abs=1e-4) and len(cells) == 9
  assert m["eval/clip_iqa"] == pytest.approx(float(scorer.clip_iqa(grid, tuple(config.rewards.pickscore.iqa_pair)).mean()),
                                             abs=1e-5)


def test_update_forward_as_old_logprob_is_the_same_step_in_fp32(tiny_asset, tmp_path, single_device_step):
  """rl.old_logprob="update": the first update's own forward (stop-gradient) is the ratio's old log-prob. In
  fp32 the sampler and the update agree to float rounding, so the step is the rollout-log-prob step; the gap
  to the sampler is still logged (sampler_ratio_dev)."""
  over = {"total_steps": 1, "mesh.num_devices": 1, "rl.old_logprob": "update", **_ONE_STEP}
  res = run(generator_config(tiny_asset, **over), tmp_path)
  (m,), (ref, ref_params) = res.metrics, single_device_step
  assert m["ratio_dev_first"] == 0.0 and m["clip_frac_high"] == m["clip_frac_low"] == 0.0
  assert m["sampler_ratio_dev"] == pytest.approx(ref["ratio_dev_first"], abs=1e-6) and m["sampler_ratio_dev"] < 1e-5
  np.testing.assert_allclose(m["loss"], ref["loss"], rtol=0, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), _params(res), ref_params)


def test_timestep_remat_step_equals_the_stored_step(tiny_asset, tmp_path, single_device_step):
  """rl.remat_timesteps recomputes each trained timestep's forward in the backward instead of storing it: the
  same loss, ratio and updated params as the step that stores every timestep (float rounding of the re-run)."""
  over = {"total_steps": 1, "mesh.num_devices": 1, "rl.remat_timesteps": True, **_ONE_STEP}
  res = run(generator_config(tiny_asset, **over), tmp_path)
  (m,), (ref, ref_params) = res.metrics, single_device_step
  assert m["ratio_dev_first"] < 1e-5
  np.testing.assert_allclose(m["loss"], ref["loss"], rtol=0, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), _params(res), ref_params)


def test_scan_layers_with_lora_step_equals_the_loop(tmp_path):
  """model.scan_layers with LoRA on the shipped generator (joint blocks 1 and 2 identical: one scan, their adapters
  stacked inside it) trains as the unrolled blocks do: the same loss and updated adapters and V-A embedding."""
  over = {"total_steps": 1, "mesh.num_devices": 1, "model.lora.rank": 4, **_ONE_STEP}
  loop = run(generator_config("", **over), tmp_path / "loop")
  scan = run(generator_config("", **over, **{"model.scan_layers": True}), tmp_path / "scan")
  np.testing.assert_allclose(scan.metrics[0]["loss"], loop.metrics[0]["loss"], rtol=0, atol=1e-6)
  assert scan.metrics[0]["ratio_dev_first"] < 1e-5
  params = _params(scan)
  b = [v for k, v in jax.tree_util.tree_flatten_with_path(params["lora"])[0] if "lora_B" in jax.tree_util.keystr(k)]
  assert b and max(float(np.abs(v).max()) for v in b) > 0  # B starts at 0: the adapters trained
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), params, _params(loop))
