"""python -m emojax.plan --config=configs/generator.py:sd35m --mesh=data=1,fsdp=8,tensor=1 [--device_memory=95GiB]
   python -m emojax.plan --config=configs/lvlm.py:qwen25vl_7b --mesh=data=1,fsdp=8,tensor=1

Will a job fit a mesh? From weight shapes alone (no weights: model configs come from model.pretrained /
rewards.lvlm.path when they name a directory, else from the preset architecture --architecture), the programs
the job runs are lowered and compiled ahead of time for the mesh on simulated CPU devices, and each prints one
JSON line: per-device bytes of the parameters, the LoRA adapters, the optimizer state, the constants (the KL
reference, the VAE) and the batch, from their shardings; XLA's figures (memory_analysis: arguments, outputs,
aliased donations, temporaries); their total against --device_memory and whether it fits; the analytic
parameter bytes (global and per device) beside XLA's argument figure, and for an SD3 update its stored
activations and largest attention transient by arithmetic (`emojax.planning.activations`); and `largest_buffers`,
XLA's largest arrays.

Programs. generator_grpo: rollout (the SDE sampler and the decode), update (the train step), judge (the LVLM
reward's greedy answers to a batch of rollout images, its weights sharded over the same mesh by the Qwen rules),
pickscore (PickScore's image tower on one batch, on the default device), and device: not a program but the
default device's peak over them all, with everything that stays resident between them (`emojax.planning.resident`).
lvlm_grpo: rollout (G sampled answers per image with the KV cache), update.

How. A job is built as it trains, except that its models' weights are ShapeDtypeStructs: an SD3 generator's
pipeline is `policy.AbstractSD3Pipeline`, an LVLM's parameters `qwen_vl.param_shapes`, and the host stages (the
judge's text parsing) are replaced by score arrays of the right shape. Each program is then lowered with the
trainer's shardings and compiled; nothing is allocated. `plan(config, ...)` does it in process (tests, bench/).

XLA's CPU compiler schedules and fuses as a CPU does; a TPU's or GPU's temporaries differ (the parameter,
optimizer and constant figures do not), so read temp_bytes as an order of magnitude.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from emojax import cli, optim, parallel, trainer
from emojax.io import assets
from emojax.lvlm import processor as proc_lib
from emojax.lvlm import sampling
from emojax.models import lora as lora_lib
from emojax.models import mmdit
from emojax.models import qwen_vl as qv
from emojax.pipelines import policy as policy_lib
from emojax.planning import activations, resident
from emojax.planning.resident import nbytes
from emojax.rewards import registry as reward_registry
from emojax.tasks.generator_grpo import GeneratorGRPO
from emojax.tasks.lvlm_grpo import LVLMGRPO

AXES = ("data", "fsdp", "tensor")
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
         "TIB": 2**40}


def parse_mesh(text: str) -> dict[str, int]:
  """"data=1,fsdp=8,tensor=1" -> {"data": 1, "fsdp": 8, "tensor": 1}; missing axes are 1."""
  mesh = dict.fromkeys(AXES, 1)
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, size = part.partition("=")
    if name not in AXES:
      raise ValueError(f"--mesh: unknown axis {name!r}; the axes are {', '.join(AXES)} (e.g. data=1,fsdp=8,tensor=1)")
    if not size.isdigit() or int(size) < 1:
      raise ValueError(f"--mesh: {name}={size!r} must be a positive integer")
    mesh[name] = int(size)
  return mesh


def parse_bytes(text: str) -> int:
  m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
  if not m:
    raise ValueError(f"--device_memory={text!r}: expected a size such as 95GiB, 80GB or 17179869184")
  return int(float(m.group(1)) * UNITS[(m.group(2) or "B").upper()])


F32 = jnp.float32
# XLA:CPU computes bf16 dots in f32, and its while-loop-invariant code motion hoists the f32 converts of a scan's
# bf16 inputs (the stacked layer weights, the saved activations) out of the loop: it stores whole f32 copies of
# them, which a TPU or GPU, doing the arithmetic in bf16, never makes. Without that pass the plan shows the bf16
# buffers, but it also stops hoisting that saves memory elsewhere: read such a plan beside the default one, not as a
# bound (docs/memory.md has both; the sd35m_1gpu update plans larger without the pass).
BF16_NATIVE_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def sds(tree):
  """Arrays (host or device) and ShapeDtypeStructs -> ShapeDtypeStructs."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def mmdit_config(pretrained: str, architecture: str) -> mmdit.MMDiTConfig:
  path = os.path.join(pretrained or "", "transformer", "config.json")
  if pretrained and os.path.isfile(path):
    return mmdit.MMDiTConfig.from_dict(_read_json(path))
  if architecture not in mmdit.PRESETS:
    raise ValueError(f"--architecture={architecture!r}: no MMDiT preset of that name ({', '.join(mmdit.PRESETS)})")
  return mmdit.PRESETS[architecture]


def qwen_config(path: str, architecture: str) -> qv.QwenVLConfig:
  """A Qwen2.5-VL config from a directory's config.json (an emojax LVLM export or a transformers one; no weights
  read), else the preset."""
  if path and path.startswith("asset:"):
    path = assets.asset_dir(path[len("asset:"):])
  cfg = os.path.join(path or "", "config.json")
  if path and os.path.isfile(cfg):
    d = _read_json(cfg)
    return qv.QwenVLConfig.from_dict(d) if os.path.isfile(os.path.join(path, "params.safetensors")) \
        else qv.QwenVLConfig.from_hf_dict(d)
  if architecture not in qv.PRESETS:
    raise ValueError(f"--architecture={architecture!r}: no Qwen2.5-VL preset of that name ({', '.join(qv.PRESETS)})")
  return qv.PRESETS[architecture]


def shape_processor(cfg: qv.QwenVLConfig) -> proc_lib.Processor:
  """The model's image preprocessing with the tiny world's byte tokenizer: token ids change no shape here (prompts
  are max_prompt_len long whatever they say), and a checkpoint's tokenizer files are not needed."""
  return proc_lib.Processor(proc_lib.ImageConfig.for_model(cfg), proc_lib.TinyChatTokenizer())


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%[\w.-]+ = (\w+)\[([\d,]*)\]\S* ([\w-]+)\(")
_NOT_BUFFERS = ("parameter", "get-tuple-element", "bitcast", "tuple", "constant", "after-all", "partition-id")


def _stack_frames(hlo_text: str) -> dict[int, str]:
  """stack_frame_id -> "file.py:line" from the module's FileNames / FileLocations / StackFrames tables."""
  tables, name = {}, None
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      name = line
      tables[name] = {}
    elif name and re.match(r"^\d+ ", line):
      i, rest = line.split(" ", 1)
      tables[name][int(i)] = rest
    elif name and not line.strip():
      continue
    else:
      name = None
  files = {i: os.path.basename(v.strip('"')) for i, v in tables.get("FileNames", {}).items()}
  locations = {}
  for i, v in tables.get("FileLocations", {}).items():
    f, ln = re.search(r"file_name_id=(\d+)", v), re.search(r"\bline=(\d+)", v)
    if f and ln:
      locations[i] = f"{files.get(int(f.group(1)), '?')}:{ln.group(1)}"
  out = {}
  for i, v in tables.get("StackFrames", {}).items():
    loc = re.search(r"file_location_id=(\d+)", v)
    if loc:
      out[i] = locations.get(int(loc.group(1)), "")
  return out


def largest_buffers(hlo_text: str, n: int = 6) -> list[dict]:
  """The n largest arrays an optimized (SPMD-partitioned: per-device) HLO module computes, outside fused
  computations: bytes, dtype[shape], the op and the source line that made them (from the op metadata).
  Not all of them are alive at once; they name what the temporaries are made of."""
  found, fused, where = {}, False, _stack_frames(hlo_text)
  for line in hlo_text.splitlines():
    if line and not line.startswith(" "):  # a computation header (or its closing brace)
      fused = line.startswith(("%fused", "fused"))
      continue
    m = _INSTRUCTION.match(line)
    if fused or not m or m.group(3) in _NOT_BUFFERS or m.group(1) not in _DTYPE_BYTES:
      continue
    dims = [int(d) for d in m.group(2).split(",") if d]
    size = _DTYPE_BYTES[m.group(1)] * math.prod(dims)
    op = re.search(r'op_name="([^"]*)"', line)
    src = re.search(r'source_file="([^"]*)" source_line=(\d+)', line)
    frame = re.search(r"stack_frame_id=(\d+)", line)
    source = (f"{os.path.basename(src.group(1))}:{src.group(2)}" if src else
              where.get(int(frame.group(1)), "") if frame else "")
    key = (f"{m.group(1)}[{m.group(2)}]", m.group(3), op.group(1).rsplit("/", 1)[-1] if op else "", source)
    found[key] = (size, found.get(key, (0, 0))[1] + 1)
  top = sorted(found.items(), key=lambda kv: -kv[1][0])[:n]
  return [{"bytes": size, "array": k[0], "hlo": k[1], "op": k[2], "source": k[3], "count": count}
          for k, (size, count) in top]


def _program(name, lower, args, target: dict, parts: dict, analytic: dict) -> dict:
  """lower(*args) -> jax Lowered (a jitted function's .lower) compiled for `target` (`plan`) and measured."""
  t0 = time.perf_counter()
  compiled = lower(*args).compile(compiler_options=BF16_NATIVE_OPTIONS if target["bf16_native"] else None)
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  xla = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
         "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
         "code_bytes": m.generated_code_size_in_bytes}
  total = xla["argument_bytes"] + xla["output_bytes"] - xla["alias_bytes"] + xla["temp_bytes"]
  return {"program": name, **parts, **{f"xla_{k}": int(v) for k, v in xla.items()}, "total_bytes": int(total),
          "total_gib": round(total / 2**30, 3), "device_memory_bytes": target["device_memory"],
          "fits": bool(total <= target["device_memory"]), "bf16_native": target["bf16_native"],
          **analytic, "largest_buffers": largest_buffers(compiled.as_text()), "compile_s": round(seconds, 1)}


def _state_parts(state, shardings) -> dict:
  params, sh = state["params"], shardings["params"]
  lora = params.get(lora_lib.GROUP, {})
  lora_bytes = nbytes(lora, sh.get(lora_lib.GROUP, {})) if lora else 0
  return {"params_bytes": nbytes(params, sh) - lora_bytes, "lora_bytes": lora_bytes,
          "opt_state_bytes": nbytes(state["opt_state"], shardings["opt_state"])}


def _analytic(params, shardings) -> dict:
  return {"analytic_param_bytes": nbytes(params), "analytic_param_bytes_per_device": nbytes(params, shardings),
          "param_count": int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(params)))}


def _task_programs(config, task, mesh, batch, scores_of, target, wanted):
  """rollout and update of a task with experience / score stages, from its abstract host batch."""
  rules = trainer._rules(config)
  state, shardings = trainer._abstract_state(task, jax.random.key(0), mesh, rules)
  constants = sds(task.constants())
  const_sh = parallel.param_shardings(constants, mesh, **rules)
  batch_sh, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  parallel.check_batch(task.global_batch_size, mesh, getattr(task, "batch_description", "global batch"))
  common = {"config_task": config.task, "mesh": dict(mesh.shape), **_state_parts(state, shardings),
            "constants_bytes": nbytes(constants, const_sh)}
  analytic = _analytic(state["params"], shardings["params"])
  rows = []
  with jax.set_mesh(mesh):
    experience = jax.eval_shape(task.experience, state, batch, rng, constants)
    full = {**batch, **experience, **scores_of(experience)}
    if "rollout" in wanted:
      fn = jax.jit(task.experience, in_shardings=(shardings, batch_sh, repl, const_sh), out_shardings=batch_sh)
      rows.append(_program("rollout", fn.lower, (state, batch, rng, constants), target,
                           {**common, "batch_bytes": nbytes(batch, jax.tree.map(lambda _: batch_sh, batch))}, analytic))
    if "update" in wanted:
      fn = jax.jit(task.train_step, in_shardings=(shardings, batch_sh, repl, const_sh),
                   out_shardings=(shardings, repl), donate_argnums=(0,))
      rows.append(_program("update", fn.lower, (state, full, rng, constants), target,
                           {**common, "batch_bytes": nbytes(full, jax.tree.map(lambda _: batch_sh, full))}, analytic))
  return rows


def _judge_program(config, mesh, n_images: int, image_side: int, architecture: str, target) -> dict:
  """The LVLM reward's greedy answering of one batch of rollout images, its weights sharded over the mesh
  (rewards.lvlm.mesh = "train") or whole on the default device ("replicated")."""
  j = config.rewards.lvlm
  if j.get("mesh", "replicated") == "replicated":
    mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  cfg = qwen_config(j.path or ("" if config.model.kind == "sd3" else "asset:lvlm_tiny"), architecture or "qwen25vl_7b")
  model = qv.QwenVL(cfg, dtype=jnp.dtype(j.dtype))
  params = qv.param_shapes(cfg)
  params = optim.frozen_in(params, tuple(params), jnp.dtype(j.dtype))  # as LVLMJudgeReward stores them
  rules = dict(parallel.rules_from_config(config.sharding), param_rules=parallel.PARAM_RULES["qwen_vl"])
  shardings = parallel.param_shardings(params, mesh, **rules)
  b = int(j.batch_size)
  parallel.check_batch(b, mesh, "rewards.lvlm.batch_size")
  processor = shape_processor(cfg)
  pixels, grid = processor.image(np.zeros((image_side, image_side, 3), np.uint8))
  batch_sh = parallel.batch_sharding(mesh)
  ids = jax.ShapeDtypeStruct((b, int(j.max_prompt_len)), jnp.int32, sharding=batch_sh)
  px = jax.ShapeDtypeStruct((b * pixels.shape[0], pixels.shape[1]), F32, sharding=batch_sh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=parallel.replicated(mesh))
  # the greedy decoder `judge.answer` calls, its static arguments bound
  lower = functools.partial(sampling.sample_arrays.lower, model, grid=(grid,) * b,
                            max_new_tokens=int(j.max_new_tokens), num_samples=1, temperature=0.0, top_p=1.0,
                            eos_ids=processor.eos_ids, pad_id=processor.pad_id, prefill="once")
  parts = {"config_task": config.task, "mesh": dict(mesh.shape), "params_bytes": nbytes(params, shardings),
           "lora_bytes": 0, "opt_state_bytes": 0, "constants_bytes": 0,
           "batch_bytes": nbytes((ids, ids, px), (batch_sh,) * 3), "images_per_call": b,
           "calls_per_step": -(-n_images // b)}
  with jax.set_mesh(mesh):
    return _program("judge", lower, (abstract, ids, ids, px, key), target, parts, _analytic(params, shardings))


def _generator(config, mesh, architecture, target, wanted):
  m = config.model
  with config.unlocked():
    config.eval.preference = False  # evaluation is not planned; it would load the preference model
  if m.kind == "sd3":
    pipe = policy_lib.AbstractSD3Pipeline(mmdit_config(m.pretrained, architecture or "sd35m"), dtype=jnp.dtype(m.dtype))
    policy = policy_lib.SD3Policy("", dtype=jnp.dtype(m.dtype), remat=m.remat, scan_layers=m.scan_layers,
                                  attention=m.attention,
                                  resolution=m.resolution, max_sequence_length=m.max_sequence_length,
                                  emotion_tokens=m.emotion_tokens, seed=config.seed, pipe=pipe)
  else:
    policy = policy_lib.load(m.pretrained, "tiny", jnp.dtype(m.dtype), m.remat, m.scan_layers, attention=m.attention)
  task = GeneratorGRPO(config, policy=policy, host_rewards={})
  n = task.global_batch_size
  batch = {**policy.prompt_field_shapes(n, config.rl.cfg_scale != 1.0), "valence": jax.ShapeDtypeStruct((n,), F32),
           "arousal": jax.ShapeDtypeStruct((n,), F32)}
  host = [k for k in task.reward_weights if reward_registry.is_host(k)]
  scores_of = lambda _: {f"reward/{k}": jax.ShapeDtypeStruct((n,), F32) for k in host}
  rows = _task_programs(config, task, mesh, batch, scores_of, target, wanted)
  if m.kind == "sd3":  # the update's activations by arithmetic, beside XLA's figures
    for row in rows:
      if row["program"] == "update":
        row.update(activations.sd3_update(config, policy, dict(mesh.shape)))
  if "judge" in wanted and "lvlm_emotion" in host:
    rows.append(_judge_program(config, mesh, n, policy.image_size, architecture if m.kind != "sd3" else "", target))
  if "pickscore" in wanted and "pickscore" in host:
    program = lambda name, lower, args, parts, params: _program(name, lower, args, target,
                                                                {**parts, "mesh": "default device"},
                                                                _analytic(params, None))
    rows.append(resident.pickscore_program(config, program))
  if "device" in wanted:
    text = resident.text_encoders(m.pretrained) if m.kind == "sd3" else None
    rows.append(resident.device_row(rows, target, text))
  return rows


def _lvlm(config, mesh, architecture, target, wanted):
  cfg = qwen_config(config.model.pretrained or ("" if not config.model.allow_shipped else "asset:lvlm_tiny_sft"),
                    architecture or "qwen25vl_7b")
  task = LVLMGRPO(config, lvlm=(qv.QwenVL(cfg), cfg, qv.param_shapes(cfg), shape_processor(cfg)))
  n, g = task.global_batch_size, config.group_size
  pixels, _ = task.processor.image(np.zeros((config.data.image_size,) * 2 + (3,), np.uint8))
  batch = {"input_ids": jax.ShapeDtypeStruct((n, config.max_prompt_len), jnp.int32),
           "attention_mask": jax.ShapeDtypeStruct((n, config.max_prompt_len), jnp.int32),
           "pixel_values": jax.ShapeDtypeStruct((n, *pixels.shape), F32)}
  keys = ["rewards", "task", *task._reward_keys]
  scores_of = lambda _: {k: jax.ShapeDtypeStruct((n * g,), F32) for k in keys}
  return _task_programs(config, task, mesh, batch, scores_of, target, wanted)


PROGRAMS = {"generator_grpo": ("rollout", "update", "judge", "pickscore", "device"), "lvlm_grpo": ("rollout", "update")}


def plan(config, *, device_memory: int, architecture: str = "", programs=(), bf16_native: bool = False) -> list[dict]:
  """One dict per program of the job for config.mesh (the mesh's devices must exist: simulated ones will do);
  bf16_native: compile with BF16_NATIVE_OPTIONS."""
  known = PROGRAMS.get(config.task)
  if known is None:
    raise ValueError(f"emojax.plan plans {' and '.join(PROGRAMS)} configs, not {config.task!r}")
  unknown = sorted(set(programs) - set(known))
  if unknown:
    raise ValueError(f"--programs: {unknown} are not programs of {config.task} ({', '.join(known)})")
  if "device" in programs:  # the device's peak is over every program
    programs = known
  mesh = parallel.mesh_from_config(config.mesh)
  build = _generator if config.task == "generator_grpo" else _lvlm
  return build(config, mesh, architecture, {"device_memory": device_memory, "bf16_native": bool(bf16_native)},
               tuple(programs or known))


def _define_flags() -> None:
  """The command line's flags, defined only when it runs, so that importing `plan` (tests, bench/) beside other
  command lines defines no clashing --config."""
  config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:arg]).", lock_config=True)
  flags.DEFINE_string("mesh", "data=1,fsdp=8,tensor=1", "Mesh axes and sizes, e.g. data=2,fsdp=4,tensor=1.")
  flags.DEFINE_string("device_memory", "95GiB", "Memory of one device (e.g. 95GiB for a TPU v5p, 80GB).")
  flags.DEFINE_string("architecture", "", "Model preset when the config names no directory "
                      "(default: sd35m for an SD3 generator, qwen25vl_7b for an LVLM and its judge).")
  flags.DEFINE_list("programs", [], "Programs to plan (default: all of the job's).")
  flags.DEFINE_bool("bf16_native", False, "Compile without XLA:CPU's f32 copies of bf16 loop inputs "
                    "(BF16_NATIVE_OPTIONS), as a chip with bf16 arithmetic would not make them; a second opinion.")


def main(argv):
  f = flags.FLAGS
  config = cli.job_config(argv, f.config, "--config=configs/<job>.py[:preset] is required")
  mesh = parse_mesh(f.mesh)
  memory = parse_bytes(f.device_memory)
  cli.simulate_devices(math.prod(mesh.values()))
  jax.config.update("jax_platforms", "cpu")  # jax is imported already: it read JAX_PLATFORMS before simulate_devices
  cli.use_compilation_cache()
  with config.unlocked():
    config.mesh.num_devices = math.prod(mesh.values())
    for k, v in mesh.items():
      config.mesh[k] = v
  for row in plan(config, device_memory=memory, architecture=f.architecture, programs=f.programs,
                  bf16_native=f.bf16_native):
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  _define_flags()
  sys.exit(cli.run(main, "emojax.plan"))
