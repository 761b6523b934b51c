"""CLIP in Flax against transformers' CLIPModel (goldens from tools/make_goldens_clip.py): the model on
its own inputs, CLIPImageProcessor's preprocessing (square images and ones that need resizing and
cropping), the directory's tokenizer, and PickScore / CLIP-Score / CLIP-IQA as ClipScorer gives them."""
import functools
import json
import shutil

import jax
import numpy as np
import pytest

from emojax.io import clip_inputs
from emojax.models import clip as clip_lib
from emojax.models import text_encoder as te
from emojax.rewards.clip_scores import ClipScorer
from conftest import GOLDENS, read_golden

NAMES = ("legacy", "gelu")
TINY_PAIR = ("a clean picture", "a noisy picture")


@functools.cache
def scorer(name):
  return ClipScorer.from_pretrained(GOLDENS / f"clip_{name}", batch_size=3)  # 4 rows: a padded last batch


@pytest.mark.parametrize("name", NAMES)
def test_config_reads_pooling_and_activation_as_transformers(name):
  model, params = clip_lib.from_pretrained(GOLDENS / f"clip_{name}")
  c = model.config
  assert c.text.pooling == ("argmax_ids" if name == "legacy" else "first_eos")
  assert c.text.hidden_act == c.vision.hidden_act == ("quick_gelu" if name == "legacy" else "gelu")
  assert params["logit_scale"].shape == ()
  # the text tower is the generator's TextEncoder: its own loader reads the same weights from this directory
  text_model, text_params = te.from_pretrained(GOLDENS / f"clip_{name}")
  assert text_model.config == c.text
  jax.tree.map(np.testing.assert_array_equal, text_params, params["text"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["square", "resized"])
def test_model_matches_transformers(name, kind):
  g = read_golden(f"clip_{name}").arrays
  model, params = clip_lib.from_pretrained(GOLDENS / f"clip_{name}")
  out = jax.jit(lambda p: model.apply({"params": p}, g["input_ids"], g["attention_mask"], g[f"{kind}_pixel_values"]))(params)
  for key in ("text_embeds", "image_embeds", "logits_per_image"):
    np.testing.assert_allclose(out[key], g[f"{kind}_{key}"], atol=1e-4, rtol=0, err_msg=key)
  assert np.abs(g[f"{kind}_logits_per_image"]).max() > 0.5  # not a degenerate near-zero comparison


def test_preprocessing_matches_clip_image_processor():
  g = read_golden("clip_gelu").arrays
  cfg = clip_inputs.ImageConfig.from_directory(GOLDENS / "clip_gelu")
  assert (cfg.shortest_edge, cfg.crop_height, cfg.crop_width) == (32, 32, 32)
  np.testing.assert_allclose(clip_inputs.preprocess(g["square_images"], cfg), g["square_pixel_values"], atol=1e-5)
  for i in range(4):  # 57x40, 45x61 (bicubic resize of the short side, centre crop), 37x24 (upscale), 70x70
    im = g[f"resized_image_{i}"]
    np.testing.assert_allclose(clip_inputs.preprocess(im[None], cfg)[0], g["resized_pixel_values"][i], atol=1e-5,
                               err_msg=f"image {i} of shape {im.shape}")


def test_tokenizer_matches_the_directory_tokenizer():
  g = read_golden("clip_gelu").arrays
  ids, mask = clip_inputs.Tokenizer(GOLDENS / "clip_gelu", 16)([str(p) for p in g["prompts"]])
  np.testing.assert_array_equal(ids, g["input_ids"])
  np.testing.assert_array_equal(mask, g["attention_mask"])
  assert mask[1].all()  # the long prompt is truncated to 16 tokens, still ending in <|endoftext|>


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["square", "resized"])
def test_scores_match_their_definitions_over_transformers(name, kind):
  g, s = read_golden(f"clip_{name}").arrays, scorer(name)
  prompts = [str(p) for p in g["prompts"]]
  if kind == "square":
    ims, ps = [g["square_images"]], [prompts]
  else:  # images of different sizes: one call each, as a user with such images makes them
    ims, ps = [g[f"resized_image_{i}"][None] for i in range(4)], [[p] for p in prompts]
  paired = lambda fn: np.concatenate([fn(im, p) for im, p in zip(ims, ps)])
  alone = lambda fn, *pair: np.concatenate([fn(im, *pair) for im in ims])
  np.testing.assert_allclose(paired(s.pickscore), g[f"{kind}_pickscore"], atol=2e-3)
  np.testing.assert_allclose(paired(s.clip_score), g[f"{kind}_clip_score"], atol=1e-2)
  np.testing.assert_allclose(alone(s.clip_iqa), g[f"{kind}_clip_iqa_default"], atol=1e-4)
  np.testing.assert_allclose(alone(s.clip_iqa, TINY_PAIR), g[f"{kind}_clip_iqa_tiny"], atol=1e-4)
  assert np.ptp(g[f"{kind}_clip_iqa_default"]) > 1e-3 and (g[f"{kind}_clip_score"] > 0).any()


def test_scores_are_float32_arrays_and_bad_images_are_one_line():
  s, g = scorer("gelu"), read_golden("clip_gelu").arrays
  out = s.pickscore(g["square_images"], [str(p) for p in g["prompts"]])
  assert out.dtype == np.float32 and out.shape == (4,)
  with pytest.raises(ValueError, match="images must be uint8"):
    s.clip_iqa(g["square_images"].astype(np.float32))
  with pytest.raises(ValueError, match=r"non-empty \(N, H, W, 3\)"):
    s.clip_iqa(g["square_images"][..., :2])
  with pytest.raises(ValueError, match="4 images but 3 prompts"):
    s.pickscore(g["square_images"], ["a"] * 3)
  with pytest.raises(ValueError, match="one antonym pair"):
    s.clip_iqa(g["square_images"], ("good",))


def test_missing_files_and_non_clip_configs_are_one_line(tmp_path):
  src = GOLDENS / "clip_gelu"
  no_weights = tmp_path / "no_weights"
  shutil.copytree(src, no_weights)
  (no_weights / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="no model.safetensors .* put the CLIP weights"):
    ClipScorer.from_pretrained(no_weights)
  no_tok = tmp_path / "no_tokenizer"
  shutil.copytree(src, no_tok)
  (no_tok / "tokenizer.json").unlink()
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    ClipScorer.from_pretrained(no_tok)
  not_clip = tmp_path / "not_clip"
  not_clip.mkdir()
  (not_clip / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "hidden_size": 8}))
  with pytest.raises(ValueError, match="not a CLIPModel config .*'qwen2_5_vl'"):
    ClipScorer.from_pretrained(not_clip)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ClipScorer.from_pretrained(tmp_path / "nowhere")
