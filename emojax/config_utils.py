"""Config helpers: shared config pieces, `file.py:preset,key=value` parsing, and declared ranges.

Configs import only this module and ml_collections, so loading one pulls in no jax, Flax or
model. Each config file declares the valid range of every field it has in one table, `RANGES`
(path -> Range; a path may end in `.*` for every key below it); `validate` checks a config
against it before a job touches its workdir.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any

import ml_collections

# Sharding rules (config defaults; emojax.parallel applies them). Parameter path regex -> logical
# axes, first match wins; dense kernels are (in, out): column-parallel layers shard out over
# tensor, row-parallel ones in.
_FSDP_TAIL = (  # what no model-specific rule matched: every kernel fsdp over its input dimension
    (r".*/kernel$", ("embed", None)),
    (r".*/lora_A$", ("embed", None)),  # LoRA adapters (d_in, r) and (r, d_out): fsdp over the model width
    (r".*/lora_B$", (None, "embed")),
    (r".*", None),  # everything else (norms, biases, small tensors): replicated
)
DEFAULT_PARAM_RULES = (
    (r".*(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|q_proj|k_proj|v_proj|fc1|gate_proj|up_proj|net_0.*|proj_in|linear_1)/kernel$", ("embed", "mlp")),
    (r".*(to_out.*|to_add_out|out_proj|o_proj|fc2|down_proj|net_2)/kernel$", ("mlp", "embed")),
    (r".*(embedding|token_embedding|embed_tokens)$", ("vocab", "embed")),
) + _FSDP_TAIL
# The MMDiT (SD3 / SD3.5 transformer; the tiny generator adds its CLIP-style text encoder, matched by the defaults
# after): attention projections split by heads and the feed-forward by width over tensor (Megatron column / row
# pairs), every other kernel (adaLN modulations, the largest, and the embedders) fsdp over its input dimension.
MMDIT_PARAM_RULES = (
    (r".*attn2?/(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)/kernel$", ("embed", "heads")),
    (r".*attn2?/(to_out_0|to_add_out)/kernel$", ("heads", "embed")),
    (r".*/net_0/proj/kernel$", ("embed", "mlp")),
    (r".*/net_2/kernel$", ("mlp", "embed")),
    (r".*pos_embed/pos_embed$", (None, "embed", None)),  # the (1, M*M, D) sincos buffer: 0.9 GB f32 in SD3.5-M
) + DEFAULT_PARAM_RULES
# Qwen2.5-VL: the decoder's and the vision blocks' attention and SwiGLU MLP tensor-parallel, the untied lm_head and
# the token embedding split over the vocabulary; the vision attention's fused qkv, the patch embedding and the
# merger fsdp only (tensor over a fused q|k|v output would split across the three).
QWEN_VL_PARAM_RULES = (
    (r".*self_attn/(q_proj|k_proj|v_proj)/kernel$", ("embed", "heads")),
    (r".*self_attn/o_proj/kernel$", ("heads", "embed")),
    (r".*mlp/(gate_proj|up_proj)/kernel$", ("embed", "mlp")),
    (r".*mlp/down_proj/kernel$", ("mlp", "embed")),
    (r".*embed_tokens/embedding$", ("vocab", "embed")),
    (r".*lm_head/kernel$", ("embed", "vocab")),
) + _FSDP_TAIL
BATCH_AXES = ("data", "fsdp")
DEFAULT_LOGICAL_RULES = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("batch", BATCH_AXES),
)


# -------------------------------------------------------------------------------------------- ranges


@dataclasses.dataclass(frozen=True)
class Range:
  """A field's valid values: a number interval, a set of choices, or a type (see the helpers below)."""
  kind: str  # "int" | "float" | "bool" | "str" | "choice" | "names" | "floats" | "ints" | "any"
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


def flatten(config) -> dict[str, Any]:
  """Leaf fields of a (nested) ConfigDict or dict as {dotted.path: value}."""
  out = {}
  for k, v in (config.items() if hasattr(config, "items") else ()):
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update({f"{k}.{sub}": x for sub, x in flatten(v).items()})
    else:
      out[str(k)] = v
  return out


def range_of(path: str, ranges: dict[str, Range]) -> Range | None:
  if path in ranges:
    return ranges[path]
  matches = [p for p in ranges if p.endswith(".*") and fnmatch.fnmatchcase(path, p)]
  return ranges[max(matches, key=len)] if matches else None


def validate(config, ranges: dict[str, Range], what: str = "config") -> None:
  """One-line ValueError for the first field outside its declared range (or with none declared)."""
  for path, value in sorted(flatten(config).items()):
    r = range_of(path, ranges)
    if r is None:
      raise ValueError(f"{what} field {path} has no declared range (add it to the config file's RANGES)")
    if not r.ok(value):
      raise ValueError(f"{what} field {path}={value!r} is out of range: it must be {r.describe()}")


# ------------------------------------------------------------------------------------- shared pieces


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


def run_fields(c: ml_collections.ConfigDict, *, task: str, total_steps: int, checkpoint_every: int,
               eval_every: int, keep_checkpoints: int = 2, seed: int = 0) -> None:
  """The fields every training job has, set on c."""
  c.task = task  # which job emojax.train runs
  c.seed = seed  # seeds init, per-step RNG and data order (a resumed run must keep it)
  c.total_steps = total_steps  # optimizer steps of the whole run (may grow on resume)
  c.checkpoint_every = checkpoint_every  # steps between checkpoints (and at total_steps and on SIGTERM)
  c.keep_checkpoints = keep_checkpoints  # newest checkpoints kept
  c.eval_every = eval_every  # steps between evaluations (and at total_steps)
  c.resume_changes = ""  # comma-separated fields deliberately changed from the checkpoint resumed (staged runs)


RUN_RANGES = {
    "seed": Int(0), "total_steps": Int(1), "checkpoint_every": Int(1), "keep_checkpoints": Int(1),
    "eval_every": Int(1), "resume_changes": STR,
}


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, num_devices: int = -1) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_devices = num_devices  # devices the mesh uses (the first N); -1 = all
  c.data = data  # data-parallel axis size; -1 = all devices left over
  c.fsdp = fsdp  # parameter/optimizer-sharded data-parallel axis size
  c.tensor = tensor  # tensor-parallel axis size (shards heads / MLP width)
  return c


MESH_RANGES = {f"mesh.{k}": Int(1, also=(-1,)) for k in ("num_devices", "data", "fsdp", "tensor")}


def sharding(param_rules=DEFAULT_PARAM_RULES) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.param_rules = [(rx, names) for rx, names in param_rules]  # param path regex -> logical axes, first match wins
  c.logical_rules = [(n, a) for n, a in DEFAULT_LOGICAL_RULES]  # logical axis -> mesh axes
  return c


SHARDING_RANGES = {"sharding.param_rules": ANY, "sharding.logical_rules": ANY}


def optimizer(lr: float, grad_clip: float = 1.0, weight_decay: float = 0.0, warmup_steps: int = 0,
              decay_steps: int = 0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
              decay_fraction: float = 0.0) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.learning_rate = lr  # peak learning rate of AdamW
  c.warmup_steps = warmup_steps  # linear warmup steps, then constant
  c.decay_steps = decay_steps  # linear decay to 0 over the last decay_steps of total_steps (0 = none)
  c.decay_fraction = decay_fraction  # or over this share of total_steps, rounded (0 = none; not with decay_steps)
  c.b1 = b1  # Adam beta1
  c.b2 = b2  # Adam beta2
  c.eps = eps  # Adam epsilon
  c.weight_decay = weight_decay  # decoupled weight decay
  c.grad_clip = grad_clip  # global-norm gradient clipping threshold
  return c


OPTIM_RANGES = {
    "optim.learning_rate": Positive(), "optim.warmup_steps": Int(0), "optim.decay_steps": Int(0),
    "optim.decay_fraction": Float(0.0, 1.0, hi_open=True),
    "optim.b1": Float(0.0, 1.0, hi_open=True), "optim.b2": Float(0.0, 1.0, hi_open=True), "optim.eps": Positive(),
    "optim.weight_decay": Float(0.0), "optim.grad_clip": Positive(),
}


def lvlm_judge(path: str = "", batch_size: int = 32, max_prompt_len: int = 120,
               max_new_tokens: int = 152) -> ml_collections.ConfigDict:
  """The LVLM judge of the generator's lvlm_emotion reward."""
  c = ml_collections.ConfigDict()
  c.path = path  # LVLM judge directory (emojax export or transformers Qwen2.5-VL); "" = the shipped tiny judge
  c.batch_size = batch_size  # images per jitted greedy-decoding batch (the last batch is padded)
  c.max_prompt_len = max_prompt_len  # prompt tokens, left-padded: the judge question + the image tokens
  c.max_new_tokens = max_new_tokens  # answer tokens decoded at most (the tiny judge's answers need 148)
  c.dtype = "float32"  # compute dtype of the judge's forward (weights are cast per op; a 7B judge: bfloat16)
  c.mesh = "replicated"  # "replicated": each host's default device; "train": sharded over the training job's mesh
  return c


def lvlm_judge_ranges(prefix: str) -> dict[str, Range]:
  return {f"{prefix}.path": STR, f"{prefix}.batch_size": Int(1), f"{prefix}.max_prompt_len": Int(1),
          f"{prefix}.max_new_tokens": Int(1), f"{prefix}.dtype": OneOf("float32", "bfloat16"),
          f"{prefix}.mesh": OneOf("replicated", "train")}


# Flow-GRPO's SD3.5-M LoRA targets: the joint attention's image and context projections
SD3_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

QWEN_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # decoder only


def lora(rank: int = 0, alpha: float = 64.0, targets=SD3_LORA_TARGETS) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.rank = rank  # LoRA rank; 0 = no LoRA (the configured parameter groups train directly)
  c.alpha = alpha  # the adapter's output is scaled by alpha / rank
  c.dropout = 0.0  # dropout on the adapter's input (GRPO needs 0: the rollout and the update must be one policy)
  c.target_modules = tuple(targets)  # Dense layers to adapt: PEFT-style names matched as dotted-path suffixes
  return c


def lora_ranges(prefix: str) -> dict[str, Range]:
  return {f"{prefix}.rank": Int(0), f"{prefix}.alpha": Positive(), f"{prefix}.dropout": Float(0.0, 1.0, hi_open=True),
          f"{prefix}.target_modules": Names()}


def preference_model(path: str = "", scale: float = 1.0, batch_size: int = 32) -> ml_collections.ConfigDict:
  """The preference model of the generator's pickscore reward and metrics."""
  c = ml_collections.ConfigDict()
  c.path = path  # transformers CLIP directory (e.g. PickScore_v1); "" = the shipped tiny preference model
  c.scale = scale  # the reward is PickScore / scale (PickScore_v1: 26, as Flow-GRPO; the tiny model: see its README)
  c.iqa_pair = ("a clean picture", "a noisy picture")  # CLIP-IQA antonyms (positive first); real CLIP: Good/Bad photo.
  c.batch_size = batch_size  # images per jitted scoring batch
  return c


def preference_model_ranges(prefix: str) -> dict[str, Range]:
  return {f"{prefix}.path": STR, f"{prefix}.scale": Positive(), f"{prefix}.iqa_pair": Names(),
          f"{prefix}.batch_size": Int(1)}


def lvlm_data(seed: int) -> ml_collections.ConfigDict:
  """config.data of the LVLM jobs: which EmoShapes world they train on, and its noise augmentation."""
  d = ml_collections.ConfigDict()
  d.name = "emoshapes"  # training images: "emoshapes" or "emoset_va" (emojax.data.sources)
  d.dir = ""  # TFDS data_dir of a prepared dataset ("" with emoshapes: the procedural world)
  d.config = ""  # TFDS builder config ("" = the image side, e.g. "64")
  d.workers = 0  # grain worker processes reading and transforming records (0: threads of the main process)
  d.seed = seed  # EmoShapes world seed of the training images
  d.num_examples = 200_000  # size of the procedural training set
  d.image_size = 32  # EmoShapes image side in pixels
  d.dark_prob = 0.0  # share of training images darkened (x U(0.04, 0.4)) and relabelled (pipeline.Darken)
  d.noise_prob = 0.5  # share of training images given Gaussian pixel noise and relabelled (pipeline.PixelNoise)
  d.noise_max_std = 0.4  # the noise std is uniform in [0, noise_max_std] ([0, 1] pixel units)
  d.feedback_share = 0.0  # share of rows turned into feedback-task rows (pipeline.FeedbackTask); 0 = judge only
  return d


LVLM_DATA_RANGES = {
    "data.name": OneOf("emoshapes", "emoset_va"), "data.dir": STR, "data.config": STR, "data.workers": Int(0),
    "data.seed": Int(0), "data.num_examples": Int(1), "data.image_size": Int(8, 4096),
    "data.dark_prob": Fraction(), "data.noise_prob": Fraction(), "data.noise_max_std": Fraction(), "data.feedback_share": Fraction(),
}
