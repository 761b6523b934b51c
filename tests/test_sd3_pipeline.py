"""SD3Pipeline against diffusers' StableDiffusion3Pipeline on a small random-weight pipeline directory in the
real layout (tests/goldens/sd3_pipeline/, from tools/make_goldens_sd3_pipeline.py): encode_prompt with
negatives, a whole 2-step CFG generation from fixed latents, and the directory errors."""
import functools
import json
import shutil

import numpy as np
import pytest

from emojax.pipelines import sd3
from conftest import GOLDENS, read_golden

PIPELINE = GOLDENS / "sd3_pipeline"


@functools.cache
def pipeline():
  return sd3.SD3Pipeline.from_pretrained(PIPELINE)


def test_encode_prompt_matches_diffusers():
  g = read_golden("sd3_pipeline").arrays
  pe, pooled, npe, npooled = pipeline().encode_prompt(list(g["prompts"]), list(g["negatives"]),
                                                      max_sequence_length=int(g["t5_len"]))
  for ours, name in ((pe, "prompt_embeds"), (pooled, "pooled"), (npe, "negative_prompt_embeds"),
                     (npooled, "negative_pooled")):
    assert ours.shape == g[name].shape, name
    np.testing.assert_allclose(ours, g[name], atol=1e-4, rtol=0, err_msg=name)
  clip_width = sum(m.config.hidden_size for m, _, _ in pipeline().clip)
  assert np.all(np.asarray(pe)[:, :16, clip_width:] == 0)  # CLIP states zero-padded to T5's width


def test_two_step_cfg_generation_matches_diffusers():
  g = read_golden("sd3_pipeline").arrays
  latents = np.transpose(g["latents"], (0, 2, 3, 1))
  p = pipeline()
  images = p.generate_unit(list(g["prompts"]), list(g["negatives"]), latents, num_steps=int(g["num_steps"]),
                           guidance_scale=float(g["guidance_scale"]), max_sequence_length=int(g["t5_len"]))
  assert images.shape == g["images"].shape
  np.testing.assert_allclose(images, g["images"], atol=1e-3, rtol=0)
  u8 = p.generate(list(g["prompts"]), list(g["negatives"]), latents, num_steps=int(g["num_steps"]),
                  guidance_scale=float(g["guidance_scale"]), max_sequence_length=int(g["t5_len"]))
  assert u8.dtype == np.uint8 and np.abs(u8.astype(int) - np.round(g["images"] * 255)).max() <= 1


def test_bad_pipeline_directories_fail_with_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="put a diffusers SD3 / SD3.5 pipeline directory"):
    sd3.SD3Pipeline.from_pretrained(tmp_path)
  d = tmp_path / "p"
  shutil.copytree(PIPELINE, d)
  index = json.loads((d / "model_index.json").read_text())
  (d / "model_index.json").write_text(json.dumps(dict(index, _class_name="StableDiffusionXLPipeline")))
  with pytest.raises(ValueError, match="holds a StableDiffusionXLPipeline, not an SD3 pipeline"):
    sd3.SD3Pipeline.from_pretrained(d)
  (d / "model_index.json").write_text(json.dumps(index))
  shutil.rmtree(d / "text_encoder_2")
  with pytest.raises(FileNotFoundError, match="has no text_encoder_2/"):
    sd3.SD3Pipeline.from_pretrained(d)
  shutil.copytree(PIPELINE / "text_encoder_2", d / "text_encoder_2")
  shutil.rmtree(d / "tokenizer_3")
  shutil.copytree(PIPELINE / "tokenizer", d / "tokenizer_3")  # a CLIP tokenizer beside the T5 encoder
  with pytest.raises(ValueError, match="tokenizer_3 has 330 tokens but its text encoder only 54"):
    sd3.SD3Pipeline.from_pretrained(d)
