"""The tiny world's prompt feedback: content phrases, the colour model's inverse, oracle rewrites, critiques."""
import colorsys

import numpy as np
import pytest

from emojax.data import emoshapes, feedback
from emojax.emotion.colour import brightness_saturation_for, colour_judge_np, va_from_means


def test_inverse_reads_back_as_the_target_where_a_colour_reaches_it():
  hits = 0
  for v in np.linspace(-3, 3, 13):
    for a in np.linspace(-3, 3, 13):
      b, s = brightness_saturation_for(v, a)
      assert 0 <= b <= 1 and 0 <= s <= 1
      rv, ra = va_from_means(b, s)
      if 0 < b < 1 and 0 < s < 1:  # not clipped: exact
        np.testing.assert_allclose([rv, ra], [v, a], atol=1e-5)
        hits += 1
  assert hits > 60
  # landmarks of emojax.emotion.colour: mid grey, white, the darkest vivid colour
  np.testing.assert_allclose(brightness_saturation_for(-0.7253, -1.9780), (0.5, 0.0), atol=1e-3)
  np.testing.assert_allclose(va_from_means(*brightness_saturation_for(1.55, -3.0)), (1.55, -3.0), atol=2e-2)
  # V 3, A -3 needs B > 1: the clipped colour is white's neighbourhood, not the target
  assert va_from_means(*brightness_saturation_for(3.0, -3.0))[0] < 2.5


def test_an_image_painted_at_the_inverse_reads_as_the_target():
  for v, a in [(-1.5, 0.0), (1.0, -1.0), (0.0, 1.5), (2.0, 0.5)]:
    b, s = brightness_saturation_for(v, a)
    # a flat colour of value b and saturation s (hue 200 degrees: any hue reads the same)
    image = np.full((8, 8, 3), np.round(np.array(colorsys.hsv_to_rgb(200 / 360, s, b)) * 255), np.uint8)
    np.testing.assert_allclose(colour_judge_np(image), (v, a), atol=0.05)  # uint8 rounding


def test_content_reads_neutral_and_emotional_prompts_alike():
  for i in range(50):
    e = emoshapes.make_example(3, i)
    want = feedback.content(e["prompt"])
    assert want and feedback.content(e["emotional_prompt"]) == want
    assert feedback.content_kept(e["prompt"], e["emotional_prompt"])
  assert feedback.content("a star at the top and a ring at the top left") == [("star", "at the top"),
                                                                              ("ring", "at the top left")]


@pytest.mark.parametrize("rewritten", [
    "a bright vivid warm circle at the top left",  # the square is lost
    "a bright circle at the top left and a dim square at the bottom left",  # the square moved
    "a bright circle at the top left and a dim triangle at the bottom right",  # another kind
    "a circle at the top left and a square at the bottom right and a star in the center",  # invented
    "a circle at the top left and a square at the bottom right, on a dark background with a ring",  # stray kind
    "a circle at the top left and a square at the bottom right, on a background dark at the top",  # stray place
    "",
])
def test_content_kept_refuses_lost_moved_and_invented_shapes(rewritten):
  neutral = "a circle at the top left and a square at the bottom right"
  assert feedback.content_kept(neutral, "a dim soft cool circle at the top left and a bright grey square at the "
                                        "bottom right, on a dark vivid warm background")
  assert not feedback.content_kept(neutral, rewritten)


def test_oracle_rewrite_keeps_content_and_names_the_inverse_colour():
  neutral = emoshapes.make_example(3, 0)["prompt"]
  dark_calm = feedback.oracle_rewrite(neutral, -2.0, -1.0)
  bright_vivid = feedback.oracle_rewrite(neutral, 2.5, 1.5)
  for text in (dark_calm, bright_vivid):
    assert feedback.content_kept(neutral, text) and text.endswith(" background")
  assert dark_calm.endswith("on a dark grey background") or dark_calm.endswith("cool background")
  assert "bright vivid warm background" in bright_vivid and "bright vivid cool" in bright_vivid
  with pytest.raises(ValueError, match="no '<shape> <place>' phrase"):
    feedback.oracle_rewrite("a happy picture", 0.0, 0.0)
  with pytest.raises(ValueError):
    feedback.oracle_rewrite(neutral, 3.5, 0.0)


def test_critique_names_the_gap_in_brightness_and_vividness():
  assert "too dark" in feedback.critique((2.0, 0.0), (-1.0, 0.0))
  assert "make it brighter" in feedback.critique((2.0, 0.0), (-1.0, 0.0))
  assert "too vivid" in feedback.critique((0.0, -2.0), (0.0, 2.0))
  assert feedback.critique((1.0, 1.0), (1.02, 0.98)).endswith("close to the target")
  assert feedback.critique((0.0, 0.0), (9.0, -9.0)).startswith("read as V +9.0 A -9.0")  # judged out of range: clipped


def test_feedback_examples_are_pure_parse_back_and_keep_content():
  from emojax.emotion.prompts import parse_feedback
  a, b = feedback.feedback_example(1, 4), feedback.feedback_example(1, 4)
  assert a["answer"] == b["answer"] and np.array_equal(a["image"], b["image"])
  gaps = set()
  for i in range(40):
    e = feedback.feedback_example(1, i)
    assert parse_feedback(e["answer"]) == e["rewritten"] == feedback.oracle_rewrite(e["prompt"], e["valence"], e["arousal"])
    assert feedback.content_kept(e["prompt"], e["rewritten"])
    assert f"V{float(e['valence']):+.1f} A{float(e['arousal']):+.1f}" in e["question"] and e["prompt"] in e["question"]
    np.testing.assert_allclose(colour_judge_np(e["image"]), (e["judged_valence"], e["judged_arousal"]), atol=1e-5)
    gaps.add(e["answer"].split("</think>")[0])
  assert {"<think>close to the target", "<think>too dark"} <= {g.split(" and")[0] for g in gaps}  # critiques vary


def test_short_critique_is_the_gap_alone():
  # higher V at the same A takes more brightness and, to hold A, more saturation
  assert feedback.critique((2.0, 0.0), (-1.0, 0.0), short=True) == "too dark and too muted"
  assert feedback.critique((1.0, 1.0), (1.02, 0.98), short=True) == "close to the target"


def test_feedback_rewards_score_layout_and_kept_content():
  from emojax.rewards import feedback as feedback_rewards
  e = next(x for x in (feedback.feedback_example(2, i) for i in range(20)) if len(feedback.content(x["prompt"])) >= 2)
  neutral, good = e["prompt"], e["answer"]
  lost = good.replace(e["rewritten"], e["rewritten"].split(" and ")[0].split(",")[0] + ", on a dim grey background")
  texts = [good, "  " + good + "\n", "note " + good, good + good, "<think>x</think><prompt> </prompt>", lost, None]
  np.testing.assert_array_equal(feedback_rewards.format_reward(texts), [1, 1, 0, 0, 0, 1, 0])
  kept = feedback_rewards.content_reward(texts, [neutral] * len(texts))
  np.testing.assert_array_equal(kept, [1, 1, 1, 1, 0, 0, 0])  # "note ..." parses, though it is ill-formed
  with pytest.raises(ValueError, match="2 feedback answers for 1 neutral prompts"):
    feedback_rewards.content_reward([good, good], [neutral])
