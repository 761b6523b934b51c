"""The LVLM judge as a generator reward (host reward "lvlm_emotion", emojax.rewards.registry).

Generated images (B, H, W, 3) in [-1, 1] are quantised to uint8 exactly as a saved PNG would be,
put to the judge with its judge question (`emojax.lvlm.judge`), and answered greedily (jitted, KV
cache, fixed batch size so one program serves every step). Each answer is parsed; the reward is the
colour judge's form 1 - (|V̂ - V| + |Â - A|) / 12 against the requested (V, A), 0 for an unparsable
answer (`emotion_reward_from_answers`, `emotion_distance`), so the two judges give rewards on one scale.

Where it runs (`rewards.lvlm.mesh`): "replicated", on each host's default device with a whole copy of its
weights (the tiny judge, single hosts); "train", its weights sharded over the training mesh by the Qwen2.5-VL rules
and each jitted batch a global array of every host's rows (a 7B judge on a pod): each host prepares its own
images' prompts and parses its own rows' answers, and no host ever holds another's images.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emojax import optim, parallel
from emojax.emotion.answer import parse_answers
from emojax.emotion.scoring import worst_error
from emojax.emotion.space import check_va
from emojax.io import assets
from emojax.io.images import to_uint8
from emojax.lvlm import judge
from emojax.rewards.emotion_distance import emotion_reward

SHIPPED_JUDGE = "lvlm_tiny"


def emotion_reward_from_answers(answers: Sequence, target_va) -> np.ndarray:
  """1 - (|V̂ - V| + |Â - A|) / 12 per answer (`emotion_distance.emotion_reward`), 0 if unparsable.

  target_va is (B, 2), rows of (V, A), as the generator batch stacks them.
  """
  answers = parse_answers(answers)
  target_va = np.asarray(target_va, np.float32)
  if target_va.shape != (len(answers), 2):
    raise ValueError(f"target_va has shape {target_va.shape}, expected ({len(answers)}, 2) rows of (V, A)")
  check_va(target_va[:, 0], target_va[:, 1])
  ok = np.array([a is not None for a in answers], bool)
  v_hat = np.array([a.valence if a is not None else np.nan for a in answers], np.float32)
  a_hat = np.array([a.arousal if a is not None else np.nan for a in answers], np.float32)
  return np.asarray(emotion_reward(v_hat, a_hat, target_va[:, 0], target_va[:, 1], valid=ok), np.float32)


@dataclasses.dataclass
class LVLMJudgeReward:
  model: object
  params: object
  processor: object
  batch_size: int
  max_prompt_len: int
  max_new_tokens: int
  mesh: object = None  # a jax Mesh: params sharded over it, batches global (None: replicated, default device)
  last_texts: list = dataclasses.field(default_factory=list)

  @classmethod
  def from_config(cls, c, mesh=None) -> "LVLMJudgeReward":
    """c: `config_utils.lvlm_judge()` fields (path, batch_size, max_prompt_len, max_new_tokens, dtype, mesh); mesh:
    the training mesh, which c.mesh = "train" shards the judge over."""
    if c.get("mesh", "replicated") == "train":
      if mesh is None:
        raise ValueError("rewards.lvlm.mesh=train shards the judge over a training job's mesh; here there is none "
                         "(use replicated)")
      parallel.check_batch(int(c.batch_size), mesh, "rewards.lvlm.batch_size (a judge batch over the mesh)")
    else:
      mesh = None
    model, _, params, processor = judge.load_lvlm(c.path or assets.asset_dir(SHIPPED_JUDGE))
    model = model.clone(dtype=jnp.dtype(c.dtype))
    params = optim.frozen_in(params, tuple(params), jnp.dtype(c.dtype))  # frozen: stored as it computes
    if mesh is None:
      params = jax.device_put(params)
    else:
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
      rules = parallel.PARAM_RULES["qwen_vl"]
      params = jax.device_put(params, parallel.param_shardings(abstract, mesh, param_rules=rules))
    return cls(model, params, processor, int(c.batch_size), int(c.max_prompt_len), int(c.max_new_tokens), mesh)

  def answers(self, images) -> list[str]:
    self.last_texts = judge.judge(self.model, self.params, self.processor, to_uint8(images),
                                  batch_size=self.batch_size, max_prompt_len=self.max_prompt_len,
                                  max_new_tokens=self.max_new_tokens, mesh=self.mesh)
    return self.last_texts

  def __call__(self, images, batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    answers = parse_answers(self.answers(images))
    target = np.stack([np.asarray(batch["valence"], np.float32), np.asarray(batch["arousal"], np.float32)], -1)
    reward = emotion_reward_from_answers(answers, target)
    ok = np.array([a is not None for a in answers])
    read = lambda f: np.array([getattr(a, f) if a is not None else np.nan for a in answers], np.float32)
    # the judge's own reading against the target; an unparsed answer counts as the worst in-range one
    err = lambda f, t: np.where(ok, np.abs(read(f) - t), worst_error(t)).astype(np.float32)
    return reward, {"parsed": ok.astype(np.float32), "v_abs_err": err("valence", target[:, 0]),
                    "a_abs_err": err("arousal", target[:, 1])}
