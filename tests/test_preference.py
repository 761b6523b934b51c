"""The tiny world's preference model: procedural pairs, its training job and export, and the shipped one."""
import json

import jax
import numpy as np
import pytest

from configs import pretrain_preference
from emojax.data import emoshapes, preference_pairs as pp
from emojax.evaluation import layout, preference as pref_eval
from emojax.io import assets, clip_inputs
from emojax.rewards.clip_scores import SHIPPED_PREFERENCE, ClipScorer
from emojax.tasks.pretrain_preference import PretrainPreference


@pytest.mark.parametrize("kind", pp.KINDS)
def test_every_fault_changes_the_picture_and_is_deterministic(kind):
  for i in range(20):
    p = pp.make_pair(3, i, kind=kind)
    assert p["preferred"].dtype == p["rejected"].dtype == np.uint8
    assert np.abs(p["preferred"].astype(int) - p["rejected"]).max() > 20, (kind, i)
    assert pp.KINDS[p["kind"]] == kind and p["image_fault"] == (kind in pp.IMAGE_FAULTS)
    np.testing.assert_array_equal(p["rejected"], pp.make_pair(3, i, kind=kind)["rejected"])
  assert pp.make_pair(3, 0, kind=kind)["preferred"].tobytes() == emoshapes.make_example(3, 0)["image"].tobytes()


def test_prompt_faults_break_what_the_caption_says():
  for i in range(20):
    ex = emoshapes.make_example(3, i)
    want = layout.named_kinds([ex["prompt"]])[0] >= 0
    moved, missing = (layout.read_layout(pp.make_pair(3, i, kind=k)["rejected"][None])[0][0]
                      for k in ("moved_shapes", "missing_shape"))
    assert not (moved & want).any() and moved.sum() == want.sum()  # every shape elsewhere, none lost
    assert missing.sum() == want.sum() - 1 and not (missing & ~want).any()
    p = pp.make_pair(3, i, kind="wrong_colours")
    assert p["caption"] == ex["emotional_prompt"]  # the colour words are what the fault breaks
    background, shapes = emoshapes.sample_layout(np.random.default_rng((3, i)))
    regions = emoshapes.render(background, shapes)[1]  # same shapes in the same places, other colours
    assert emoshapes.describe(p["rejected"], regions, shapes)["emotional_prompt"] != p["caption"]
    assert (layout.read_layout(p["rejected"][None])[0][0] == want).all()


def test_pure_noise_has_no_shapes_and_varies():
  prompts, clean, noise = pref_eval.pure_noise(8, 6)
  assert noise.dtype == np.uint8 and noise.shape == clean.shape and len(prompts) == 6
  assert noise.reshape(6, -1, 3).std(1).mean() > 30  # per-pixel colour noise, not a flat colour


def test_smoke_run_exports_a_clip_directory_the_scorer_reads(tiny_preference):
  config, workdir, task, result = tiny_preference
  assert result.step == 3 and all(np.isfinite(m["loss"]) for m in result.metrics)
  m = result.metrics[-1]
  # the logged loss is its parts' weighted sum
  assert m["loss"] == pytest.approx(m["contrastive"] + config.preference_weight * m["preference"]
                                    + config.iqa_weight * m["iqa"], rel=1e-5)
  s = ClipScorer.from_pretrained(workdir / "export", batch_size=config.eval.batch_size)
  jax.tree.map(np.testing.assert_array_equal, s.params, jax.device_get(result.state["params"]))
  assert s.model.config == task.clip_config
  captions = [e["emotional_prompt"] for e in (emoshapes.make_example(9, i) for i in range(3))]
  np.testing.assert_array_equal(s.tokenizer(captions)[0], task.tokenizer(captions)[0])  # the exported tokenizer
  text_config = json.loads((workdir / "export" / "config.json").read_text())["text_config"]
  fast = task.tokenizer.tokenizer
  assert (text_config["bos_token_id"], text_config["pad_token_id"]) == (fast.bos_token_id, fast.pad_token_id)
  # the logged evaluation is the exported model's, recomputed here
  want = pref_eval.evaluate(s.pickscore, lambda im: s.clip_iqa(im, tuple(config.iqa_pair)), task.eval_pairs,
                            task.eval_noise)
  for k, v in want.items():
    assert m[f"eval/{k}"] == pytest.approx(v, abs=1e-6), k


def test_the_tokenizer_is_a_function_of_the_config():
  config = pretrain_preference.get_config("smoke")
  a, b = PretrainPreference(config), PretrainPreference(config)
  text = ["a bright vivid warm star in the center, on a dim muted cool background"]
  np.testing.assert_array_equal(a.tokenizer(text)[0], b.tokenizer(text)[0])
  assert a.tokenizer(text)[0][0, 0] == a.tokenizer.tokenizer.bos_token_id


@pytest.mark.asset
def test_shipped_preference_model_prefers_clean_pictures():
  """On held-out pairs of a world it never saw, the shipped model ranks the clean render above its faulty twin
  for every fault kind, reads image faults with its quality pair, and scores pure colour noise under the
  clean render of the same prompt."""
  s = ClipScorer.from_pretrained(assets.asset_dir(SHIPPED_PREFERENCE))
  pair = ("a clean picture", "a noisy picture")
  out = pref_eval.evaluate(s.pickscore, lambda im: s.clip_iqa(im, pair), pref_eval.held_out_pairs(777, 50),
                           pref_eval.pure_noise(777, 50))
  print(out)
  assert out["pref_acc_min"] >= 0.95, out
  assert out["noise_below_clean"] >= 0.95 and out["score_noise"] < out["score_clean"], out
  assert min(v for k, v in out.items() if k.startswith("iqa_acc/")) >= 0.8, out
  assert clip_inputs.ImageConfig.from_directory(assets.asset_dir(SHIPPED_PREFERENCE)).crop_height == 32
