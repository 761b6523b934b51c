"""The feedback task's GRPO reward (emojax.rewards.feedback) and its wiring in LVLM GRPO: what a rewrite
achieves is rendered from noise shared by its group and read by a judge; judge and feedback rows of one
batch each get their own task's reward."""
import numpy as np
import pytest

from configs import lvlm as lvlm_config
from emojax import config_utils
from emojax.data import feedback, judge_targets
from emojax.emotion.answer import Answer
from emojax.emotion.colour import colour_judge_np
from emojax.emotion.prompts import format_feedback, parse_feedback
from emojax.rewards import feedback as fb
from emojax.rewards import multitask
from emojax.tasks.lvlm_grpo import LVLMGRPO

NEUTRAL = "a circle at the top left and a square at the bottom"
GOOD = format_feedback("a dark vivid warm circle at the top left and a pale muted cool square at the bottom, "
                       "on a bright vivid warm background", "too dark")
LOST = format_feedback("a dark vivid warm circle at the top left, on a bright vivid warm background", "too dark")


def _reader(readings):
  """A judge that reads image k as readings[k] (None: unparsed)."""
  def read(images):
    return [None if r is None else Answer(r[0], r[1], None, "", True) for r in readings[:len(images)]]
  return read


def test_effect_rewards_only_rewrites_that_keep_their_content_and_shares_noise_within_a_group():
  calls = []

  def render(prompts, va, ids):
    calls.append((list(prompts), np.asarray(va), np.asarray(ids)))
    return np.zeros((len(prompts), 4, 4, 3), np.uint8)

  texts = [GOOD, LOST, "no tags at all", GOOD]
  targets = [(1.0, -2.0)] * 4
  out = fb.effect_reward(texts, [NEUTRAL] * 4, targets, [5, 5, 5, 9], render=render,
                         read=_reader([(1.5, -2.0), (0.0, -1.0), None, (1.0, 1.0)]), eps=1.0, renders=2)
  (prompts, va, ids), = calls
  assert prompts == [parse_feedback(GOOD)] * 4
  np.testing.assert_array_equal(ids, [10, 11, 18, 19])  # noise id * renders + r: rows 0 and 3 only
  np.testing.assert_array_equal(va, [[1.0, -2.0]] * 4)
  # row 0: renders read (1.5, -2) and (0, -1): valence rewards 0.5 and 0, arousal 1 and 0
  np.testing.assert_allclose(out["valence"], [0.25, 0, 0, 0.5])
  np.testing.assert_allclose(out["arousal"], [0.5, 0, 0, 0])
  # row 3: unparsed then (1, 1): reward 0 for the unparsed render (valence 1 for the other), its error the worst in range
  np.testing.assert_allclose(out["v_abs_err"][[0, 3]], [0.75, (4.0 + 0.0) / 2])
  np.testing.assert_allclose(out["a_abs_err"][[0, 3]], [0.5, (5.0 + 3.0) / 2])
  assert np.isnan(out["v_abs_err"][[1, 2]]).all()  # lost content / unparsed answers are never rendered


def test_feedback_reward_sums_weighted_components_and_rejects_unknown_ones():
  render = lambda p, va, ids: np.zeros((len(p), 4, 4, 3), np.uint8)
  total, parts = fb.feedback_reward([GOOD, LOST], [NEUTRAL] * 2, [(0.0, 0.0)] * 2, [0, 1],
                                    {"format": 1.0, "content": 2.0, "valence": 0.5}, render=render,
                                    read=_reader([(0.4, 3.0)]), eps=2.0)
  np.testing.assert_allclose(parts["format"], [1, 1])
  np.testing.assert_allclose(parts["content"], [1, 0])
  np.testing.assert_allclose(total, [1 + 2 + 0.5 * 0.8, 1])
  with pytest.raises(ValueError, match="unknown feedback reward components"):
    fb.feedback_reward([], [], np.zeros((0, 2)), [], {"pickscore": 1.0}, render=render, read=render, eps=1.0)


@pytest.fixture(scope="module")
def mixed_task(tmp_path_factory):
  """LVLM GRPO with half the rows asking the feedback question; renders by the shipped generator (2 ODE
  steps), read by the colour judge instead of an LVLM so the expected rewards can be computed here."""
  c = lvlm_config.get_config("feedback_smoke")
  c.unlock()
  c.data.feedback_share = 0.5
  config_utils.validate(c, lvlm_config.FIELDS, what="configs/lvlm.py")
  task = LVLMGRPO(c)
  task._read = lambda images: [Answer(float(v), float(a), None, "", True) for v, a in zip(*colour_judge_np(images))]
  return task


def _rows(task, texts):
  ids = [task.processor.tokenizer.encode(t) for t in texts]
  width = max(map(len, ids))
  tokens = np.zeros((len(ids), width), np.int32)
  mask = np.zeros_like(tokens)
  for i, t in enumerate(ids):
    tokens[i, :len(t)], mask[i, :len(t)] = t, 1
  return {"tokens": tokens, "completion_mask": mask}


def test_mixed_batch_rewards_each_task_by_its_own_reward(mixed_task):
  task, g = mixed_task, mixed_task.config.group_size
  from emojax.data import emoshapes
  ex = [emoshapes.make_example(4, i, 32) for i in range(2)]
  raw = {"image": np.stack([e["image"] for e in ex]), "prompt": np.array([e["prompt"] for e in ex]),
         "emotional_prompt": np.array([e["emotional_prompt"] for e in ex]),
         "valence": np.array([e["valence"] for e in ex], np.float32),
         "arousal": np.array([e["arousal"] for e in ex], np.float32),
         "category": np.array([e["category"] for e in ex], np.int32), "task": np.array([0, 1], np.int32),
         "feedback_valence": np.array([0.0, 1.5], np.float32), "feedback_arousal": np.array([0.0, -2.0], np.float32)}
  e0 = ex[0]
  judge_texts = [judge_targets.target_text(e0["image"], e0["emotional_prompt"], e0["valence"], e0["arousal"],
                                           e0["category"])] + ["garbage"] * (g - 1)
  oracle = feedback.oracle_rewrite(ex[1]["prompt"], 1.5, -2.0)
  fb_texts = [format_feedback(oracle, "too dark")] * 2 + ["garbage"] * (g - 2)
  out = task.score(_rows(task, judge_texts + fb_texts), raw)

  want_judge, _ = multitask.multitask_reward(judge_texts, [e0["valence"]] * g, [e0["arousal"]] * g,
                                                [e0["category"]] * g, task.weights, task.config.rewards.eps)
  np.testing.assert_allclose(out["rewards"][:g], want_judge, rtol=1e-6)
  assert np.isnan(out["reward/feedback_format"][:g]).all() and np.isnan(out["reward/valence"][g:]).all()
  np.testing.assert_array_equal(out["task"], [0] * g + [1] * g)
  # the two identical rewrites share their group's noise, so the same image and the same reward
  assert out["rewards"][g] == out["rewards"][g + 1] and out["rewards"][g + 2] == 0
  got_v = 1.0 - out["reward/feedback_v_abs_err"][g] / task.config.feedback.eps
  np.testing.assert_allclose(out["reward/feedback_valence"][g], max(0.0, got_v), atol=1e-6)
  assert out["rewards"][g] == pytest.approx(2 + out["reward/feedback_valence"][g] + out["reward/feedback_arousal"][g])


def test_feedback_task_needs_the_feedback_lengths():
  c = lvlm_config.get_config("feedback_smoke")
  c.unlock()
  c.max_prompt_len = 120
  with pytest.raises(ValueError, match="the feedback task needs at least 215 and 239 .*configs/lvlm.py:feedback"):
    LVLMGRPO(c)


def test_mixed_run_through_the_trainer_logs_both_tasks(tiny_export, tmp_path):
  """One step of configs/lvlm.py:feedback_smoke with half the rows feedback turns, on the 2-layer random LVLM:
  both tasks' questions fit the lengths, every component is logged (0 over a task with no rows), and the
  feedback evaluation runs."""
  from emojax import trainer
  c = lvlm_config.get_config("feedback_smoke")
  c.unlock()
  c.model.pretrained = c.feedback.judge.path = tiny_export
  c.data.feedback_share, c.total_steps, c.eval_every, c.mesh.num_devices = 0.5, 1, 1, 1
  result = trainer.run(c, str(tmp_path), LVLMGRPO(c), progress=False)
  (m,) = result.metrics
  assert np.isfinite(m["loss"]) and 0 <= m["feedback_rows"] <= 1
  for k in ("reward/format", "reward/valence", "reward/feedback_format", "reward/feedback_content",
            "reward/feedback_valence", "eval/feedback_format_rate", "eval/feedback_content_rate", "eval/valence_mae"):
    assert k in m and np.isfinite(m[k]), k
