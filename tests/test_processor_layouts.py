"""Image processor settings in both transformers layouts: the flat preprocessor_config.json (an image
processor's own save_pretrained; checkpoints made before transformers 5) and transformers 5's
processor_config.json with the settings nested under "image_processor" (a processor's save_pretrained).
CLIP against transformers' CLIPProcessor saved both ways here; Qwen2.5-VL against the directories and
outputs of tools/make_goldens_processors.py (its processor needs torchvision) and, live, transformers'
PIL image processor reading the same directories."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from emojax.io import clip_inputs
from emojax.lvlm import processor as P
from emojax.models import qwen_vl as qv
from emojax.rewards.clip_scores import ClipScorer
from conftest import GOLDENS, read_golden

QWEN = GOLDENS / "processors"
LAYOUT_FILE = {"nested": "processor_config.json", "flat": "preprocessor_config.json"}
CLIP_SETTINGS = dict(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 28}, image_mean=[0.5, 0.4, 0.3],
                     image_std=[0.2, 0.25, 0.3])


def odd_images():
  """Odd sizes (down- and upscaled, portrait and landscape, one needing no resize), noise and shapes."""
  rng = np.random.default_rng(0)
  out = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in [(45, 61), (61, 45), (23, 37), (40, 57), (36, 28)]]
  y, x = np.mgrid[:83, :50]
  out.append(np.stack([x * 5, y * 3, 255 * ((x // 7 + y // 5) % 2)], -1).astype(np.uint8))
  return out


def hf_image_processor(directory):
  """transformers' own reading of a directory, on its PIL backend (torchvision's resize differs)."""
  from transformers import AutoImageProcessor
  return AutoImageProcessor.from_pretrained(directory, backend="pil", local_files_only=True)


def clip_tokenizer():
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(GOLDENS / "clip_gelu", local_files_only=True)


def save_clip(directory, layout, **settings):
  """transformers' CLIPImageProcessorPil saved alone (flat) or in a CLIPProcessor (nested); its outputs."""
  from transformers import CLIPProcessor
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
  ip = CLIPImageProcessorPil(**{**CLIP_SETTINGS, **settings})
  if layout == "nested":
    CLIPProcessor(image_processor=ip, tokenizer=clip_tokenizer()).save_pretrained(directory)
  else:
    ip.save_pretrained(directory)
  return ip


def hf_pixels(ip, image):
  return ip(images=[image], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


# ------------------------------------------------------------------------------------------------------ CLIP


@pytest.mark.parametrize("layout", LAYOUT_FILE)
def test_clip_reads_both_layouts(tmp_path, layout):
  ip = save_clip(tmp_path, layout)
  assert sorted(p.name for p in tmp_path.glob("*processor_config.json")) == [LAYOUT_FILE[layout]]
  if layout == "nested":
    assert "image_processor" in json.loads((tmp_path / "processor_config.json").read_text())
  cfg = clip_inputs.ImageConfig.from_directory(tmp_path)
  assert (cfg.shortest_edge, cfg.crop_height, cfg.crop_width) == (40, 36, 28)
  assert cfg.image_mean == (0.5, 0.4, 0.3) and cfg.image_std == (0.2, 0.25, 0.3)
  loaded = hf_image_processor(tmp_path)
  for im in odd_images():
    want = hf_pixels(loaded, im)
    np.testing.assert_array_equal(want, hf_pixels(ip, im))  # transformers reads back what it saved
    np.testing.assert_allclose(clip_inputs.preprocess(im[None], cfg)[0], want, atol=1e-6, rtol=0,
                               err_msg=f"{layout} {im.shape}")


def test_clip_scorer_reads_a_transformers5_processor_directory(tmp_path):
  """The CLIP golden with its preprocessor_config.json replaced by a CLIPProcessor's processor_config.json
  (so 32x32, not 224x224 as without settings) scores as the original."""
  for f in ("config.json", "model.safetensors"):
    shutil.copy(GOLDENS / "clip_gelu" / f, tmp_path)
  save_clip(tmp_path, "nested", size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
            image_mean=list(clip_inputs.CLIP_MEAN), image_std=list(clip_inputs.CLIP_STD))
  assert not (tmp_path / "preprocessor_config.json").exists()
  noise = np.random.default_rng(3).integers(0, 256, (3, 45, 50, 3), dtype=np.uint8)  # resized and cropped
  images = np.concatenate([noise, [odd_images()[5][i:i + 45] for i in (0, 38)]])
  prompts = ["a circle", "a star on a dim background", "Good photo.", "a square", "a ring"]
  want = ClipScorer.from_pretrained(GOLDENS / "clip_gelu", batch_size=3).pickscore(images, prompts)
  got = ClipScorer.from_pretrained(tmp_path, batch_size=3).pickscore(images, prompts)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert np.ptp(want) > 0.01  # distinct scores: a mix-up of images would show


def test_emojax_clip_directories_read_back_in_transformers(tmp_path):
  cfg = clip_inputs.ImageConfig(shortest_edge=40, crop_height=36, crop_width=28, image_mean=(0.5, 0.4, 0.3),
                                image_std=(0.2, 0.25, 0.3))
  cfg.save(tmp_path)
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
  for ip in (hf_image_processor(tmp_path), CLIPImageProcessorPil.from_pretrained(tmp_path)):
    assert type(ip) is CLIPImageProcessorPil
    for im in odd_images():
      np.testing.assert_allclose(clip_inputs.preprocess(im[None], cfg)[0], hf_pixels(ip, im), atol=1e-6, rtol=0)
  # the shipped preference model, as the preference job exports it: transformers' CLIPProcessor loads it whole
  from transformers import CLIPProcessor
  from emojax.io import assets
  shipped = assets.asset_dir("pickscore_tiny")
  proc = CLIPProcessor.from_pretrained(shipped, backend="pil", local_files_only=True)
  im = odd_images()[3]
  np.testing.assert_allclose(clip_inputs.preprocess(im[None], clip_inputs.ImageConfig.from_directory(shipped))[0],
                             hf_pixels(proc.image_processor, im), atol=1e-6, rtol=0)
  ids, _ = clip_inputs.Tokenizer(shipped, 16)(["a bright star"])
  np.testing.assert_array_equal(ids[0], proc.tokenizer(["a bright star"], padding="max_length", max_length=16,
                                                       return_tensors="np")["input_ids"][0])


def test_both_files_nested_wins_as_in_transformers(tmp_path):
  save_clip(tmp_path, "flat", size={"shortest_edge": 24}, crop_size={"height": 20, "width": 20})
  save_clip(tmp_path, "nested")
  cfg, hf = clip_inputs.ImageConfig.from_directory(tmp_path), hf_image_processor(tmp_path)
  assert (cfg.shortest_edge, cfg.crop_height) == (hf.size["shortest_edge"], hf.crop_size["height"]) == (40, 36)
  # a processor_config.json without the entry (processors saved before transformers 5): the flat file
  (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
  cfg, hf = clip_inputs.ImageConfig.from_directory(tmp_path), hf_image_processor(tmp_path)
  assert (cfg.shortest_edge, cfg.crop_height) == (hf.size["shortest_edge"], hf.crop_size["height"]) == (24, 20)


def test_no_settings_is_an_error(tmp_path):
  for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(QWEN / "qwen25vl_flat" / f, tmp_path)
  (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
  match = f"no image processor settings in {tmp_path}: looked for preprocessor_config.json and an \"image_processor\""
  with pytest.raises(FileNotFoundError, match=match):
    clip_inputs.ImageConfig.from_directory(tmp_path)
  with pytest.raises(FileNotFoundError, match=match):  # no silent HF defaults for a transformers Qwen directory
    P.Processor.from_pretrained(tmp_path, qwen_config(tmp_path))
  (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": "CLIPImageProcessor"}))
  with pytest.raises(ValueError, match="is str, not the settings dict"):
    clip_inputs.ImageConfig.from_directory(tmp_path)


# ------------------------------------------------------------------------------------------------ Qwen2.5-VL


def qwen_golden():
  return read_golden("processors/qwen25vl").arrays


def qwen_config(directory):
  return dataclasses.replace(qv.PRESETS["qwen25vl_7b"], image_token_id=P.HFChatTokenizer(directory).image_token_id)


def grey_levels(pixels, config: P.ImageConfig):
  """pixel_values rows (C, T, P, P) -> the uint8 levels they normalise, as float."""
  x = pixels.reshape(len(pixels), config.in_channels, -1)
  x = x * np.float32(config.image_std)[:, None] + np.float32(config.image_mean)[:, None]
  return (x * 255).reshape(pixels.shape)


NAMES = ("wide", "tall", "small", "exact")


@pytest.mark.parametrize("layout", LAYOUT_FILE)
def test_qwen_reads_both_layouts_as_transformers(layout):
  directory, g = QWEN / f"qwen25vl_{layout}", qwen_golden()
  assert sorted(p.name for p in directory.glob("*processor_config.json")) == [LAYOUT_FILE[layout]]
  proc = P.Processor.from_pretrained(directory, qwen_config(directory))
  c = proc.image_config
  assert (c.min_pixels, c.max_pixels, c.image_std) == (28 * 28 * 8, 28 * 28 * 40, (0.25, 0.3, 0.2))
  assert tuple(g["grid_wide"]) == (1, 6, 24) and tuple(g["default_grid_wide"]) == (1, 8, 36)
  std = np.float32(c.image_std)
  for name in NAMES:
    im = g[f"image_{name}"]
    pixels, grid = proc.image(im)
    assert grid == tuple(g[f"grid_{name}"]), name
    _, default_grid = P.preprocess_image(im, P.ImageConfig.for_model(qv.PRESETS["qwen25vl_7b"]))
    assert default_grid == tuple(g[f"default_grid_{name}"]), name
    levels = g[f"levels_{name}"].astype(np.float32)
    assert np.abs(grey_levels(pixels, c) - levels).max() <= 1 + 1e-3, name  # within one grey level
    want = (levels.reshape(len(levels), 3, -1) / np.float32(255) - np.float32(c.image_mean)[:, None]) / std[:, None]
    tol = (1 / 255 / std)[None, :, None] + 1e-6
    assert (np.abs(pixels.reshape(want.shape) - want) <= tol).all(), name
    np.testing.assert_array_equal(proc.encode(str(g["text"]), [grid]), g[f"input_ids_{name}"])


@pytest.mark.parametrize("layout", LAYOUT_FILE)
def test_qwen_matches_transformers_reading_the_directory(layout):
  """transformers' PIL image processor (no torch needed) reading the same directory, on noise too."""
  directory = QWEN / f"qwen25vl_{layout}"
  hf, config = hf_image_processor(directory), P.ImageConfig.from_directory(directory)
  images = [qwen_golden()["image_wide"], qwen_golden()["image_tall"]] + [
    np.random.default_rng(1).integers(0, 256, s + (3,), dtype=np.uint8) for s in [(123, 517), (700, 260), (20, 30)]]
  for im in images:
    want = hf(images=[im], return_tensors="np")
    pixels, grid = P.preprocess_image(im, config)
    assert grid == tuple(want["image_grid_thw"][0])
    np.testing.assert_allclose(pixels, want["pixel_values"], atol=1e-6, rtol=0, err_msg=f"{layout} {im.shape}")


def test_qwen_live_flat_save_and_precedence(tmp_path):
  """transformers' Qwen2VLImageProcessorPil saved alone here; next to the nested golden, the nested wins."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 12, image_mean=[0.4, 0.4, 0.4])
  ip.save_pretrained(tmp_path)
  for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(QWEN / "qwen25vl_nested" / f, tmp_path)
  proc = P.Processor.from_pretrained(tmp_path, qwen_config(tmp_path))
  assert proc.image_config == P.ImageConfig(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 12, image_mean=(0.4,) * 3)
  im = np.random.default_rng(2).integers(0, 256, (123, 517, 3), dtype=np.uint8)
  want = ip(images=[im], return_tensors="np")
  pixels, grid = proc.image(im)
  assert grid == tuple(want["image_grid_thw"][0]) == (1, 2, 14)
  np.testing.assert_allclose(pixels, want["pixel_values"], atol=1e-6, rtol=0)
  shutil.copy(QWEN / "qwen25vl_nested" / "processor_config.json", tmp_path)
  assert P.Processor.from_pretrained(tmp_path, qwen_config(tmp_path)).image_config.max_pixels == \
    hf_image_processor(tmp_path).size["longest_edge"] == 28 * 28 * 40
