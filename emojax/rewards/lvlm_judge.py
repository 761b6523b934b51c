"""The LVLM judge as a generator reward (host reward "lvlm_emotion", emojax.rewards.registry).

Generated images (B, H, W, 3) in [-1, 1] are quantised to uint8 exactly as a saved PNG would be,
put to the judge with its judge question, and answered greedily (jitted, KV cache, fixed batch
size so one program serves every step). Each answer is parsed; the reward is the colour judge's
form 1 - (|V̂ - V| + |Â - A|) / 12 against the requested (V, A), 0 for an unparsable answer
(`lvlm.emotion_reward_from_answers`), so the two judges give rewards on one scale.

The judge runs on this host's rows, on the default device, with its own replicated parameters:
right for the tiny judge and a single-host run; a 7B judge on a pod would want its own mesh.
"""
from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from emojax.models import assets
from emojax.rewards import lvlm as lvlm_rewards
from emojax.tasks import lvlm_common

SHIPPED_JUDGE = "lvlm_tiny"


def config(path: str = "", batch_size: int = 32, max_prompt_len: int = 120,
           max_new_tokens: int = 152) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.path = path  # LVLM judge directory (emojax export or transformers Qwen2.5-VL); "" = the shipped tiny judge
  c.batch_size = batch_size  # images per jitted greedy-decoding batch (the last batch is padded)
  c.max_prompt_len = max_prompt_len  # prompt tokens, left-padded: the judge question + the image tokens
  c.max_new_tokens = max_new_tokens  # answer tokens decoded at most (the tiny judge's answers need 148)
  return c


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels, rounded as the sample PNGs are."""
  return np.round((np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


@dataclasses.dataclass
class LVLMJudgeReward:
  model: object
  params: object
  processor: object
  batch_size: int
  max_prompt_len: int
  max_new_tokens: int
  last_texts: list = dataclasses.field(default_factory=list)

  @classmethod
  def from_config(cls, c) -> "LVLMJudgeReward":
    model, _, params, processor = lvlm_common.load_lvlm(c.path or assets.asset_dir(SHIPPED_JUDGE))
    return cls(model, jax.device_put(params), processor, int(c.batch_size), int(c.max_prompt_len),
               int(c.max_new_tokens))

  def answers(self, images) -> list[str]:
    self.last_texts = lvlm_common.judge(self.model, self.params, self.processor, to_uint8(images),
                                        batch_size=self.batch_size, max_prompt_len=self.max_prompt_len,
                                        max_new_tokens=self.max_new_tokens)
    return self.last_texts

  def __call__(self, images, batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    answers = lvlm_rewards.parse_all(self.answers(images))
    target = np.stack([np.asarray(batch["valence"], np.float32), np.asarray(batch["arousal"], np.float32)], -1)
    reward = lvlm_rewards.emotion_reward_from_answers(answers, target)
    ok = np.array([a is not None for a in answers])
    read = lambda f: np.array([getattr(a, f) if a is not None else np.nan for a in answers], np.float32)
    # the judge's own reading against the target; an unparsed answer counts as the worst in-range one
    err = lambda f, t: np.where(ok, np.abs(read(f) - t), lvlm_common.worst_error(t)).astype(np.float32)
    return reward, {"parsed": ok.astype(np.float32), "v_abs_err": err("valence", target[:, 0]),
                    "a_abs_err": err("arousal", target[:, 1])}
