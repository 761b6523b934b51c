import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from emojax.emotion.answer import format_answer, parse_answer
from emojax.emotion.space import CATEGORIES
from emojax.rewards import multitask
from emojax.rewards.emotion_distance import emotion_reward
from emojax.rewards.lvlm_emotion import emotion_reward_from_answers


def ans(v, a, emotion="awe", well_formed=True):
  text = format_answer(v, a, emotion, "r")
  return text if well_formed else text.replace("<think>r</think>", "")  # parsable, not well formed


GARBAGE = ["", "no answer here", "<answer>{\"valence\": 9, \"arousal\": 0}</answer>", "<think>x</think>"]


def test_format_reward():
  texts = [ans(1, 1), ans(1, 1, well_formed=False)] + GARBAGE
  np.testing.assert_array_equal(multitask.format_reward(texts), [1, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("eps, want", [(1.0, [1, 0.5, 0, 0, 0.5, 0]), (2.0, [1, 0.75, 0.5, 0, 0.75, 0.25])])
def test_valence_and_arousal_graded_by_abs_error(eps, want):
  preds = [0.0, 0.5, 1.0, 3.0, -0.5, -1.5]  # errors 0, .5, 1, 3, .5, 1.5 from target 0
  texts = [ans(p, -p) for p in preds]
  np.testing.assert_allclose(multitask.valence_reward(texts, np.zeros(6), eps), want)
  np.testing.assert_allclose(multitask.arousal_reward(texts, np.zeros(6), eps), want)
  np.testing.assert_allclose(multitask.valence_reward(texts, np.full(6, 2.5), eps=1.0), [0, 0, 0, 0.5, 0, 0])
  np.testing.assert_allclose(multitask.arousal_reward([ans(0, 2.6)], [3.0], eps=1.0), [0.6], atol=1e-6)


def test_accuracy_uses_the_answer_even_if_not_well_formed():
  np.testing.assert_allclose(multitask.valence_reward([ans(1.2, 0, well_formed=False)], [1.0]), [0.8], atol=1e-6)


def test_category_reward_names_and_indices():
  texts = [ans(0, 0, "awe"), ans(0, 0, "fear"), '<answer>{"valence": 0, "arousal": 0, "emotion": "joy"}</answer>', ""]
  want = [1, 0, 0, 0]
  np.testing.assert_array_equal(multitask.category_reward(texts, ["awe", "awe", "awe", "awe"]), want)
  np.testing.assert_array_equal(multitask.category_reward(texts, np.full(4, CATEGORIES.index("awe"))), want)
  np.testing.assert_array_equal(multitask.category_reward(texts[:2], [1, 6]), [1, 1])  # awe, fear
  for bad in (["joy"] * 4, [8] * 4, [-1] * 4, ["awe"] * 3):
    with pytest.raises(ValueError):
      multitask.category_reward(texts, bad)


def test_unparsable_gives_the_minimum_everywhere():
  n = len(GARBAGE)
  total, parts = multitask.multitask_reward(GARBAGE, np.zeros(n), np.zeros(n), ["awe"] * n)
  np.testing.assert_array_equal(total, np.zeros(n))
  assert all((p == 0).all() for p in parts.values())
  np.testing.assert_array_equal(emotion_reward_from_answers(GARBAGE, np.zeros((n, 2))), np.zeros(n))


def test_multitask_weights():
  texts = [ans(0.5, 0.0, "awe"), ans(0.0, 1.0, "fear", well_formed=False), "junk"]
  v, a, c = np.zeros(3), np.zeros(3), ["awe", "awe", "awe"]
  total, parts = multitask.multitask_reward(texts, v, a, c)
  np.testing.assert_allclose(parts["format"], [1, 0, 0])
  np.testing.assert_allclose(parts["valence"], [0.5, 1, 0])
  np.testing.assert_allclose(parts["arousal"], [1, 0, 0])
  np.testing.assert_allclose(parts["category"], [1, 0, 0])
  np.testing.assert_allclose(total, [3.5, 1, 0])  # default: every component weighs 1
  total, parts2 = multitask.multitask_reward(texts, v, a, c, weights={"format": 0.5, "valence": 2.0}, eps=2.0)
  np.testing.assert_allclose(total, [0.5 + 2 * 0.75, 2.0, 0])  # absent weights count 0
  assert set(parts2) == set(multitask.COMPONENTS)  # still logged
  with pytest.raises(ValueError):
    multitask.multitask_reward(texts, v, a, c, weights={"formatt": 1.0})
  with pytest.raises(ValueError):
    multitask.multitask_reward(texts, v, a, c, eps=0.0)
  with pytest.raises(ValueError):
    multitask.multitask_reward(texts, np.zeros(2), a, c)
  with pytest.raises(ValueError):
    multitask.multitask_reward(texts, np.full(3, 3.5), a, c)


def test_texts_and_parsed_answers_score_alike():
  texts = [ans(1.3, -2.2, "sadness"), "junk", ans(-0.4, 0.9, "fear", well_formed=False)]
  answers = [parse_answer(t) for t in texts]
  args = (np.array([1.0, 0.0, 0.0]), np.array([-2.0, 0.0, 1.0]), ["sadness", "awe", "fear"])
  for x, y in zip(multitask.multitask_reward(texts, *args)[1].values(), multitask.multitask_reward(answers, *args)[1].values()):
    np.testing.assert_array_equal(x, y)


def test_emotion_reward_from_answers_known_values():
  answers = [ans(1.0, -1.0), ans(-3.0, 3.0), "junk", ans(0.0, 0.0, well_formed=False)]
  target = np.array([[1.0, -1.0], [3.0, -3.0], [0.0, 0.0], [0.6, -1.2]])
  np.testing.assert_allclose(emotion_reward_from_answers(answers, target), [1.0, 0.0, 0.0, 1 - 1.8 / 12],
                             atol=1e-6)
  with pytest.raises(ValueError):
    emotion_reward_from_answers(answers, target.T)
  with pytest.raises(ValueError):
    emotion_reward_from_answers(answers[:2], [[0.0, 3.5], [0.0, 0.0]])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3)), min_size=4,
                max_size=4))
def test_emotion_reward_matches_the_colour_judge_form(rows):
  rows = np.array(rows)
  got = emotion_reward_from_answers([ans(v, a) for v, a, _, _ in rows], rows[:, 2:])
  # the answer carries V and A as format_answer writes them: Python's round (np.round(0.45, 1) is 0.4, not 0.5)
  r1 = lambda x: np.array([round(float(v), 1) for v in x])
  want = emotion_reward(r1(rows[:, 0]), r1(rows[:, 1]), rows[:, 2], rows[:, 3])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert ((got >= 0) & (got <= 1)).all()
