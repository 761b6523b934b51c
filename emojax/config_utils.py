"""Config helpers: field declarations (default, range and doc together), shared config pieces and
`file.py:preset,key=value` parsing.

Configs import only this module and ml_collections, so loading one pulls in no jax, Flax or model. Each config
file declares every field once in `FIELDS` (a `Fields`: dotted path -> default, Range, one-line doc), builds
its defaults with `FIELDS.config()` and lets presets override values; `validate` checks a config against
`FIELDS` before a job touches its workdir.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import math
from typing import Any

import ml_collections

# emojax.parallel's named sharding rule sets (configs name one, or give their own table; configs import no jax)
RULE_SETS = ("default", "mmdit", "qwen_vl")


# -------------------------------------------------------------------------------------------- ranges


@dataclasses.dataclass(frozen=True)
class Range:
  """A field's valid values: a number interval, a set of choices, or a type (see the helpers below)."""
  kind: str  # "int" | "float" | "bool" | "str" | "choice" | "names" | "floats" | "ints" | "rules" | "any"
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  choices: tuple = ()  # "choice": the allowed values; "names": the allowed names (empty: any)
  also: tuple = ()  # extra allowed values outside the interval (e.g. -1 = "fill")

  def describe(self) -> str:
    if self.kind == "choice":
      return "one of " + ", ".join(map(repr, self.choices))
    if self.kind == "names":
      return "a tuple of names" + (" from " + ", ".join(map(repr, self.choices)) if self.choices else "")
    if self.kind == "floats":
      return f"a non-empty tuple of numbers in [{self.lo:g}, {self.hi:g}]"
    if self.kind == "ints":
      return f"a non-empty tuple of distinct integers >= {self.lo:g}"
    if self.kind == "rules":
      return "a list of (key, value) pairs"
    if self.kind in ("bool", "str", "any"):
      return {"bool": "True or False", "str": "a string", "any": "anything"}[self.kind]
    noun = "an integer" if self.kind == "int" else "a number"
    if self.lo is not None and self.hi is not None:
      text = f"{noun} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
    elif self.lo is not None:
      text = f"{noun} {'>' if self.lo_open else '>='} {self.lo:g}"
    elif self.hi is not None:
      text = f"{noun} {'<' if self.hi_open else '<='} {self.hi:g}"
    else:
      text = noun
    return text + "".join(f" or {a!r}" for a in self.also)

  def ok(self, v) -> bool:
    if self.kind == "any":
      return True
    if self.kind == "rules":
      return isinstance(v, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in v)
    if self.kind == "bool":
      return isinstance(v, bool)
    if self.kind == "str":
      return isinstance(v, str)
    if self.kind == "choice":
      return v in self.choices
    if self.kind == "names":
      return (isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v) and len(set(v)) == len(v)
              and (not self.choices or set(v) <= set(self.choices)))
    if self.kind == "floats":
      return (isinstance(v, (tuple, list)) and len(v) > 0 and all(
          isinstance(x, (int, float)) and not isinstance(x, bool) and self.lo <= x <= self.hi for x in v))
    if self.kind == "ints":
      return (isinstance(v, (tuple, list)) and len(v) > 0 and len(set(v)) == len(v) and all(
          isinstance(x, int) and not isinstance(x, bool) and x >= self.lo for x in v))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.kind == "int" and not float(v).is_integer()):
      return False
    if v in self.also:
      return True
    if not math.isfinite(v):
      return False
    if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
      return False
    return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)


def Int(lo=None, hi=None, also=()) -> Range:
  return Range("int", lo, hi, also=tuple(also))


def Float(lo=None, hi=None, lo_open=False, hi_open=False) -> Range:
  return Range("float", lo, hi, lo_open, hi_open)


def Positive() -> Range:
  return Float(0.0, lo_open=True)


def Fraction(lo_open=False) -> Range:
  return Float(0.0, 1.0, lo_open=lo_open)


def OneOf(*choices) -> Range:
  return Range("choice", choices=choices)


def Names(*allowed) -> Range:
  return Range("names", choices=allowed)


def Floats(lo: float, hi: float) -> Range:
  return Range("floats", lo, hi)


def Ints(lo: int) -> Range:
  return Range("ints", lo)


BOOL, STR, ANY = Range("bool"), Range("str"), Range("any")
DTYPES = ("float32", "float16", "bfloat16")
REMATS = ("none", "full", "dots", "dots_no_batch")  # emojax.models.remat.NAMES (configs import no models)
ATTENTIONS = ("auto", "xla", "blockwise", "cudnn", "splash")  # emojax.models.attention.IMPLEMENTATIONS


# -------------------------------------------------------------------------------------------- fields


@dataclasses.dataclass(frozen=True)
class Field:
  """A declared field: its default, the values it may take and what it does (one line)."""
  default: Any  # a leaf's value; a map's {key: value}
  range: Range
  doc: str


class Fields:
  """A job's fields, each declared once: `f("rl.group_size", 8, Int(2), "samples per prompt")`.

  A path ending in `.*` declares a map: its default is a {key: value} dict and every value below it (keys
  included later, e.g. by a preset) lies in its range. `config()` builds a fresh ConfigDict of the defaults.
  """

  def __init__(self):
    self._fields: dict[str, Field] = {}

  def __call__(self, path: str, default, range_: Range, doc: str) -> None:
    if path in self._fields or any(p.startswith(path + ".") or path.startswith(p + ".") for p in self._fields):
      raise ValueError(f"field {path} is declared twice (or as both a field and a group)")
    if not isinstance(range_, Range) or not doc.strip() or "\n" in doc:
      raise ValueError(f"field {path} needs a Range and a one-line doc")
    values = default.values() if path.endswith(".*") else (default,)
    for v in values:
      if not range_.ok(v):
        raise ValueError(f"field {path}'s default {v!r} is out of its range: it must be {range_.describe()}")
    self._fields[path] = Field(default, range_, doc)

  def include(self, prefix: str, other: Fields) -> None:
    """Every field of other, under prefix ("" = at the top)."""
    for path, f in other.items():
      self(f"{prefix}.{path}" if prefix else path, f.default, f.range, f.doc)

  def items(self):
    return self._fields.items()

  def range_of(self, path: str) -> Range | None:
    """A leaf path's range: its own declaration, else the longest map (`.*`) pattern it falls under."""
    if path in self._fields:
      return self._fields[path].range
    maps = [p for p in self._fields if p.endswith(".*") and fnmatch.fnmatchcase(path, p)]
    return self._fields[max(maps, key=len)].range if maps else None

  def config(self) -> ml_collections.ConfigDict:
    root = ml_collections.ConfigDict()
    for path, f in self._fields.items():
      is_map = path.endswith(".*")
      *parents, leaf = path.removesuffix(".*").split(".")
      node = root
      for p in parents:
        if p not in node:
          node[p] = ml_collections.ConfigDict()
        node = node[p]
      value = copy.deepcopy(f.default)
      node[leaf] = ml_collections.ConfigDict(value) if is_map else value
    return root


def flatten(config) -> dict[str, Any]:
  """Leaf fields of a (nested) ConfigDict or dict as {dotted.path: value}."""
  out = {}
  for k, v in (config.items() if hasattr(config, "items") else ()):
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update({f"{k}.{sub}": x for sub, x in flatten(v).items()})
    else:
      out[str(k)] = v
  return out


def validate(config, fields: Fields, what: str = "config") -> None:
  """One-line ValueError for the first field outside its declared range (or not declared)."""
  for path, value in sorted(flatten(config).items()):
    r = fields.range_of(path)
    if r is None:
      raise ValueError(f"{what} field {path} has no declared range (declare it in the config file's FIELDS)")
    if not r.ok(value):
      raise ValueError(f"{what} field {path}={value!r} is out of range: it must be {r.describe()}")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'tiny,steps=3' -> ConfigDict(preset='tiny', steps=3) over defaults (big_vision style)."""
  out = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    if "=" in part:
      k, v = part.split("=", 1)
      if k not in defaults:
        raise ValueError(f"unknown config argument {k!r}; known: {sorted(defaults)}")
      out[k] = type(defaults[k])(v) if defaults[k] is not None else v
    else:
      out["preset"] = part
  return ml_collections.ConfigDict(out)


def check_preset(preset: str, presets: dict[str, str], job: str) -> None:
  """One-line ValueError unless preset is one of the config file's PRESETS (name -> what it is)."""
  if preset not in presets:
    names = list(presets)
    raise ValueError(f"unknown preset {preset!r} for {job}; use {', '.join(names[:-1])} or {names[-1]}")


def preset_config(arg: str | None, fields: Fields, presets: dict[str, str], job: str):
  """(preset, defaults as a ConfigDict) of a config file's get_config(arg); PRESETS' first entry is the default."""
  preset = parse_arg(arg, preset=next(iter(presets))).preset
  check_preset(preset, presets, job)
  return preset, fields.config()


# ------------------------------------------------------------------------------------- shared pieces
# Each `*_fields` declares a group of fields; the function of the same name without `_fields` builds it as a
# ConfigDict (for presets that replace a whole group, and for code that needs one).


def _as_config(declare):
  @functools.wraps(declare)
  def build(*args, **kwargs) -> ml_collections.ConfigDict:
    return declare(*args, **kwargs).config()
  build.__name__ = build.__qualname__ = declare.__name__.removesuffix("_fields")
  build.__doc__ = f"`{declare.__name__}(...)` as a ConfigDict."
  return build


def run_fields(*, task: str, total_steps: int, checkpoint_every: int, eval_every: int, keep_checkpoints: int = 2,
               seed: int = 0) -> Fields:
  """The fields every training job has."""
  f = Fields()
  f("task", task, OneOf(task), "which job emojax.train runs")
  f("seed", seed, Int(0), "seeds init, per-step RNG and data order (a resumed run must keep it)")
  f("total_steps", total_steps, Int(1), "optimizer steps of the whole run (may grow on resume)")
  f("checkpoint_every", checkpoint_every, Int(1), "steps between checkpoints (and at total_steps and on SIGTERM)")
  f("keep_checkpoints", keep_checkpoints, Int(1), "newest checkpoints kept")
  f("eval_every", eval_every, Int(1), "steps between evaluations (and at total_steps)")
  f("resume_changes", "", STR, "comma-separated fields deliberately changed from the checkpoint resumed (staged runs)")
  return f


def mesh_fields(data: int = -1, fsdp: int = 1, tensor: int = 1, num_devices: int = -1) -> Fields:
  f = Fields()
  f("num_devices", num_devices, Int(1, also=(-1,)), "devices the mesh uses (the first N); -1 = all")
  f("data", data, Int(1, also=(-1,)), "data-parallel axis size; -1 = all devices left over")
  f("fsdp", fsdp, Int(1, also=(-1,)), "parameter/optimizer-sharded data-parallel axis size")
  f("tensor", tensor, Int(1, also=(-1,)), "tensor-parallel axis size (shards heads / MLP width)")
  return f


def sharding_fields(param_rules: str = "default") -> Fields:
  f = Fields()
  f("param_rules", param_rules, OneOf(*RULE_SETS), "param path regex -> logical axes: emojax.parallel.PARAM_RULES' set")
  f("extra_param_rules", [], Range("rules"), "[(param path regex, logical axes)] tried before param_rules' set")
  f("logical_rules", [], Range("rules"), "[(logical name, mesh axes)] replacing emojax.parallel.LOGICAL_RULES' entries")
  return f


def optimizer_fields(lr: float, grad_clip: float = 1.0, weight_decay: float = 0.0, warmup_steps: int = 0,
                     decay_steps: int = 0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     decay_fraction: float = 0.0) -> Fields:
  f = Fields()
  f("learning_rate", lr, Positive(), "peak learning rate of AdamW")
  f("warmup_steps", warmup_steps, Int(0), "linear warmup steps, then constant")
  f("decay_steps", decay_steps, Int(0), "linear decay to 0 over the last decay_steps of total_steps (0 = none)")
  f("decay_fraction", decay_fraction, Float(0.0, 1.0, hi_open=True),
    "or over this share of total_steps, rounded (0 = none; not with decay_steps)")
  f("b1", b1, Float(0.0, 1.0, hi_open=True), "Adam beta1")
  f("b2", b2, Float(0.0, 1.0, hi_open=True), "Adam beta2")
  f("eps", eps, Positive(), "Adam epsilon")
  f("weight_decay", weight_decay, Float(0.0), "decoupled weight decay")
  f("grad_clip", grad_clip, Positive(), "global-norm gradient clipping threshold")
  return f


def lvlm_judge_fields(path: str = "", batch_size: int = 32, max_prompt_len: int = 120,
                      max_new_tokens: int = 152) -> Fields:
  """The LVLM judge of the generator's lvlm_emotion reward."""
  f = Fields()
  f("path", path, STR, 'LVLM judge directory (emojax export or transformers Qwen2.5-VL); "" = the shipped tiny judge')
  f("batch_size", batch_size, Int(1), "images per jitted greedy-decoding batch (the last batch is padded)")
  f("max_prompt_len", max_prompt_len, Int(1), "prompt tokens, left-padded: the judge question + the image tokens")
  f("max_new_tokens", max_new_tokens, Int(1), "answer tokens decoded at most (the tiny judge's answers need 148)")
  f("dtype", "float32", OneOf("float32", "bfloat16"),
    "compute dtype of the judge's forward (weights are cast per op; a 7B judge: bfloat16)")
  f("mesh", "replicated", OneOf("replicated", "train"),
    '"replicated": the default device of each host; "train": sharded over the mesh of the training job')
  return f


# Flow-GRPO's SD3.5-M LoRA targets: the joint attention's image and context projections
SD3_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

QWEN_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # decoder only


def lora_fields(rank: int = 0, alpha: float = 64.0, targets=SD3_LORA_TARGETS) -> Fields:
  f = Fields()
  f("rank", rank, Int(0), "LoRA rank; 0 = no LoRA (the configured parameter groups train directly)")
  f("alpha", alpha, Positive(), "the adapter's output is scaled by alpha / rank")
  f("dropout", 0.0, Float(0.0, 1.0, hi_open=True),
    "dropout on the adapter's input (GRPO needs 0: the rollout and the update must be one policy)")
  f("target_modules", tuple(targets), Names(),
    "Dense layers to adapt: PEFT-style names matched as dotted-path suffixes")
  return f


def preference_model_fields(path: str = "", scale: float = 1.0, batch_size: int = 32) -> Fields:
  """The preference model of the generator's pickscore reward and metrics."""
  f = Fields()
  f("path", path, STR, 'transformers CLIP directory (e.g. PickScore_v1); "" = the shipped tiny preference model')
  f("scale", scale, Positive(),
    "the reward is PickScore / scale, about 1 for a clean picture (PickScore_v1: 26, as Flow-GRPO)")
  f("iqa_pair", ("a clean picture", "a noisy picture"), Names(),
    "CLIP-IQA antonyms (positive first); real CLIP: Good/Bad photo.")
  f("batch_size", batch_size, Int(1), "images per jitted scoring batch")
  return f


def lvlm_data_fields(seed: int) -> Fields:
  """config.data of the LVLM jobs: which EmoShapes world they train on, and its noise augmentation."""
  f = Fields()
  f("name", "emoshapes", OneOf("emoshapes", "emoset_va"),
    'training images: "emoshapes" or "emoset_va" (emojax.data.sources)')
  f("dir", "", STR, 'TFDS data_dir of a prepared dataset ("" with emoshapes: the procedural world)')
  f("config", "", STR, 'TFDS builder config ("" = the image side, e.g. "64")')
  f("workers", 0, Int(0), "grain worker processes reading and transforming records (0: threads of the main process)")
  f("seed", seed, Int(0), "EmoShapes world seed of the training images")
  f("num_examples", 200_000, Int(1), "size of the procedural training set")
  f("image_size", 32, Int(8, 4096), "EmoShapes image side in pixels")
  f("dark_prob", 0.0, Fraction(), "share of training images darkened (x U(0.04, 0.4)) and relabelled (pipeline.Darken)")
  f("noise_prob", 0.5, Fraction(),
    "share of training images given Gaussian pixel noise and relabelled (pipeline.PixelNoise)")
  f("noise_max_std", 0.4, Fraction(), "the noise std is uniform in [0, noise_max_std] ([0, 1] pixel units)")
  f("feedback_share", 0.0, Fraction(),
    "share of rows turned into feedback-task rows (pipeline.FeedbackTask); 0 = judge only")
  return f


mesh, sharding, optimizer = _as_config(mesh_fields), _as_config(sharding_fields), _as_config(optimizer_fields)
lvlm_judge, lora = _as_config(lvlm_judge_fields), _as_config(lora_fields)
preference_model, lvlm_data = _as_config(preference_model_fields), _as_config(lvlm_data_fields)
