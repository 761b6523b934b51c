"""The test-time feedback loop over stand-in models: a generator that paints the background its prompt names
(or mid grey), the colour judge as the LVLM judge, and the oracle or scripted rewriters."""
import colorsys
import json

import numpy as np
import pytest

from emojax.data import emoshapes, feedback
from emojax.data.emoshapes import BRIGHTNESS_WORDS, SATURATION_WORDS
from emojax.emotion.answer import format_answer
from emojax.emotion.colour import colour_judge_np
from emojax.emotion.prompts import format_feedback
from emojax.pipelines import feedback_loop as fl

NEUTRAL = "a circle at the top left and a star in the center"


def paint(prompt, va, noise_ids):
  """A flat 8x8 image per row: the background words' brightness and saturation thirds (centres), hue
  warm or cool; mid grey when the prompt names none. The noise id nudges brightness by up to 0.02."""
  out = []
  for p, n in zip(prompt, noise_ids):
    b, s, hue = 0.5, 0.0, 0.6
    words = p.rpartition(emoshapes.BACKGROUND_PREFIX)[2].split()
    if words and words[-1] == "background":
      b = (BRIGHTNESS_WORDS.index(words[0]) + 0.5) / 3
      s = 0.05 if words[1] == "grey" else (SATURATION_WORDS.index(words[1]) + 0.5) / 3
      hue = 0.05 if "warm" in words else 0.6
    b = np.clip(b + 0.02 * np.sin(n), 0, 1)
    out.append(np.full((8, 8, 3), np.round(np.array(colorsys.hsv_to_rgb(hue, s, b)) * 255), np.uint8))
  return np.stack(out)


def colour_answers(images):
  return [format_answer(float(v), float(a), "contentment") for v, a in zip(*colour_judge_np(images))]


def models(rewrite=fl.oracle_rewriter, pickscore=None):
  return fl.Models(paint, colour_answers, pickscore or (lambda im, p: np.zeros(len(im), np.float32)), rewrite)


def run(va, **kw):
  kw = dict(rounds=3, images_per_round=4, content_kept=feedback.content_kept) | kw
  return fl.run([NEUTRAL] * len(va), np.array(va, np.float32), kw.pop("models", models()), **kw)


def test_rewriting_moves_the_kept_image_toward_the_target_and_keeps_content():
  va = [(2.0, -1.0), (-2.0, 1.5), (1.0, 2.0)]
  traces = run(va)
  for t, target in zip(traces, va):
    first = min(t["rounds"][0]["error"])
    assert t["best_error"] < first - 0.5, (t["best_error"], first)  # the grey start is far from every target
    assert t["rounds"][0]["prompt"] == NEUTRAL and t["rounds"][0]["status"] == "ok"
    assert t["rounds"][1]["prompt"] == feedback.oracle_rewrite(NEUTRAL, *target)
    assert all(feedback.content_kept(NEUTRAL, r["prompt"]) for r in t["rounds"][1:])
    r, k = t["best"]
    np.testing.assert_array_equal(t["best_image"], t["rounds"][r]["images"][k])
    assert t["best_error"] == min(min(rd["error"]) for rd in t["rounds"])


def test_selection_alone_keeps_the_prompt_and_sees_the_same_noise():
  va = [(2.0, -1.0), (-1.0, 0.5)]
  with_rw, without = run(va), run(va, rewrite=False, models=models(rewrite=None))
  for a, b in zip(with_rw, without):
    assert [r["prompt"] for r in b["rounds"]] == [NEUTRAL] * 3
    assert b["rounds"][0]["status"] == "kept: rewriting is off"
    np.testing.assert_array_equal(a["rounds"][0]["images"], b["rounds"][0]["images"])  # same noise ids
    assert not np.array_equal(b["rounds"][0]["images"], b["rounds"][1]["images"])  # new noise each round
  assert np.mean([t["best_error"] for t in with_rw]) < np.mean([t["best_error"] for t in without])


@pytest.mark.parametrize("answer, status", [
    ("no blocks at all", "unparsed"),
    (format_feedback("a bright vivid warm circle at the top left, on a bright vivid warm background"), "refused"),
    (format_feedback("a circle at the top left and a ring in the center"), "refused"),
])
def test_a_bad_rewrite_keeps_the_previous_prompt_and_the_trace_says_why(answer, status):
  t = run([(2.0, -1.0)], models=models(rewrite=lambda im, p, va, j: [answer] * len(im)))[0]
  assert [r["prompt"] for r in t["rounds"]] == [NEUTRAL] * 3
  assert all(r["status"].startswith(status) for r in t["rounds"][:2])
  assert t["rounds"][0]["feedback"] == answer


def test_stop_error_ends_a_request_early_and_the_others_go_on():
  # the second target is what the oracle's words paint: it stops after round 1
  b, s = (BRIGHTNESS_WORDS.index("bright") + 0.5) / 3, (SATURATION_WORDS.index("vivid") + 0.5) / 3
  reachable = colour_judge_np(np.full((1, 1, 3), np.round(np.array(colorsys.hsv_to_rgb(0.05, s, b)) * 255), np.uint8))
  traces = run([(-2.8, 2.8), (float(reachable[0]), float(reachable[1]))], stop_error=0.15)
  assert len(traces[0]["rounds"]) == 3
  assert len(traces[1]["rounds"]) == 2 and traces[1]["rounds"][-1]["status"].startswith("stopped")
  assert traces[1]["best_error"] < 0.15


def test_pickscore_breaks_ties_between_equal_judged_errors():
  assert fl.pick_best(np.array([1.0, 0.5, 0.5]), np.array([9.0, 1.0, 2.0])) == 2
  assert fl.pick_best(np.array([0.4, 0.5]), np.array([0.0, 9.0])) == 0
  t = run([(0.0, 0.0)], rounds=1, models=models(pickscore=lambda im, p: np.arange(len(im), dtype=np.float32)),
          rewrite=False)[0]
  errs = np.array(t["rounds"][0]["error"])
  assert errs[t["rounds"][0]["chosen"]] == errs.min()


def test_unread_answers_count_as_the_worst_in_range_error():
  err = fl.judged_error([None, format_answer(1.0, 1.0, "awe")], np.array([[1.0, -2.0], [1.0, 1.0]]))
  np.testing.assert_allclose(err, [4.0 + 5.0, 0.0])


def test_bad_requests_are_one_line_errors():
  with pytest.raises(ValueError, match="outside"):
    run([(3.5, 0.0)])
  with pytest.raises(ValueError, match="empty prompt"):
    fl.run(["  "], np.zeros((1, 2), np.float32), models())
  with pytest.raises(ValueError, match="needs a rewriter"):
    fl.run([NEUTRAL], np.zeros((1, 2), np.float32), models(rewrite=None))


def test_trace_and_files_of_a_request(tmp_path):
  t = run([(2.0, -1.0)])[0]
  out = fl.write_request(str(tmp_path), t)
  assert json.loads((tmp_path / "trace.json").read_text()) == json.loads(json.dumps(out))
  assert (tmp_path / "best.png").is_file() and (tmp_path / "contact_sheet.png").is_file()
  assert len(list((tmp_path / "rounds").iterdir())) == 12
  r0 = out["rounds"][0]
  assert r0["images"][0]["file"] == "rounds/r0_0.png" and r0["critique"] and r0["status"] == "ok"
  assert {"valence", "arousal", "category", "judged_error", "pickscore"} <= set(r0["images"][0])
  assert out["best"]["judged_error"] == round(t["best_error"], 4)


def test_the_rewriter_is_asked_with_the_neutral_prompt_every_round():
  asked = []

  def rewrite(images, prompts, va, judged):
    asked.append(list(prompts))
    return fl.oracle_rewriter(images, prompts, va, judged)
  t = run([(2.0, -1.0)], rounds=3, models=models(rewrite=rewrite))[0]
  assert asked == [[NEUTRAL], [NEUTRAL]] and t["rounds"][2]["prompt"] != NEUTRAL
