"""LVLM inputs: image preprocessing against transformers' Qwen2-VL image processor, chat tokenisation
with image-placeholder expansion (tiny byte tokenizer and a local HF tokenizer), prompt batches."""
import dataclasses
import json

import numpy as np
import pytest

from emojax.io import tokenizers
from emojax.emotion import prompts
from emojax.lvlm import processor as P
from emojax.models import qwen_vl as qv

HUB_PREPROCESSOR = {  # Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json
  "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
  "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
  "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}


def hf_image_processor(config: P.ImageConfig):
  """transformers' numpy/PIL Qwen2-VL image processor (transformers 5: ...Pil; 4.x: the plain class)."""
  from transformers.models.qwen2_vl import image_processing_qwen2_vl as ipq
  try:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
  except ImportError:
    cls = ipq.Qwen2VLImageProcessor
  return cls(patch_size=config.patch_size, merge_size=config.merge_size, temporal_patch_size=config.temporal_patch_size,
             min_pixels=config.min_pixels, max_pixels=config.max_pixels, image_mean=list(config.image_mean),
             image_std=list(config.image_std))


CASES = {
  "7b_upscale": (P.ImageConfig.for_model(qv.PRESETS["qwen25vl_7b"]), (50, 70)),  # below min_pixels
  "7b_downscale": (dataclasses.replace(P.ImageConfig(), max_pixels=28 * 28 * 60), (300, 500)),
  "tiny_resize": (P.ImageConfig.for_model(qv.PRESETS["tiny"]), (50, 70)),  # 48x72
  "tiny_32": (P.ImageConfig.for_model(qv.PRESETS["tiny"]), (32, 32)),  # EmoShapes: no resize
}


@pytest.mark.parametrize("name", CASES)
def test_image_matches_transformers(name):
  config, (h, w) = CASES[name]
  image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
  want = hf_image_processor(config)(images=[image], return_tensors="np")
  pixels, grid = P.preprocess_image(image, config)
  assert grid == tuple(want["image_grid_thw"][0]) and pixels.dtype == np.float32
  np.testing.assert_allclose(pixels, want["pixel_values"], atol=1e-5, rtol=0)
  if name == "tiny_32":
    assert grid == (1, 8, 8) and pixels.shape == (64, 3 * 2 * 4 * 4)


def test_image_config():
  assert P.ImageConfig.for_model(qv.PRESETS["qwen25vl_7b"]) == P.ImageConfig()  # HF's defaults
  hub = P.ImageConfig.from_hf_dict(HUB_PREPROCESSOR)  # the Hub file allows 16384 merged tokens, the class 1280
  assert hub == dataclasses.replace(P.ImageConfig(), max_pixels=28 * 28 * 16384)
  v5 = {k: v for k, v in HUB_PREPROCESSOR.items() if "pixels" not in k}  # transformers 5 saves a size dict
  assert P.ImageConfig.from_hf_dict(dict(v5, size={"shortest_edge": 64, "longest_edge": 4096})) == \
    dataclasses.replace(P.ImageConfig(), min_pixels=64, max_pixels=4096)
  with pytest.raises(ValueError, match="do_normalize"):
    P.ImageConfig.from_hf_dict(dict(HUB_PREPROCESSOR, do_normalize=False))
  assert P.smart_resize(32, 32, 8, 256, 81920) == (32, 32)
  with pytest.raises(ValueError, match="aspect ratio"):
    P.smart_resize(1, 300, 28, 3136, 10**7)


def test_tiny_tokenizer():
  proc = P.Processor.tiny()
  assert proc.eos_ids == (tokenizers.IM_END_ID,) and proc.pad_id == 0
  text = prompts.chat_text("Rate: é?", system="S")
  ids = proc.encode(text, [(1, 8, 8)])
  assert ids.dtype == np.int32 and ids.max() < tokenizers.TINY_CHAT_VOCAB_SIZE
  start = ids.tolist().index(tokenizers.VISION_START_ID)
  assert ids[start + 1:start + 17].tolist() == [tokenizers.IMAGE_PAD_ID] * 16 and ids[start + 17] == tokenizers.VISION_END_ID
  assert ids[:3].tolist() == [tokenizers.IM_START_ID, ord("s") + 3, ord("y") + 3]  # no BOS; bytes at +3
  assert (ids == tokenizers.IM_START_ID).sum() == 3 and (ids == tokenizers.IM_END_ID).sum() == 2
  assert proc.decode(ids) == P.expand_image_pads(text, [16])
  assert proc.decode(np.r_[ids, tokenizers.IM_END_ID, 0, 0]) == P.expand_image_pads(text, [16]) + "<|im_end|>"
  assert proc.decode(ids, skip_special_tokens=True) == "system\nS\nuser\nRate: é?\nassistant\n"
  with pytest.raises(ValueError, match="1 <|image_pad|> but 2 images"):
    proc.encode(text, [(1, 8, 8)] * 2)


def make_hf_tokenizer(directory):
  """A byte-level BPE tokenizer with Qwen's chat/vision tokens, saved as transformers files (no download)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
  extra = [P.IM_START, P.IM_END, P.VISION_START, P.VISION_END, P.IMAGE_PAD]
  PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=P.ENDOFTEXT, additional_special_tokens=extra
                          ).save_pretrained(directory)
  return {s: 256 + i for i, s in enumerate([P.ENDOFTEXT] + extra)}


def test_hf_tokenizer(tmp_path):
  ids_of = make_hf_tokenizer(tmp_path / "tok")
  config = dataclasses.replace(qv.PRESETS["tiny"], image_token_id=ids_of[P.IMAGE_PAD])
  (tmp_path / "tok" / "preprocessor_config.json").write_text(json.dumps(
    dict(HUB_PREPROCESSOR, patch_size=4, min_pixels=256, max_pixels=4096)))
  proc = P.Processor.from_pretrained(tmp_path / "tok", config)
  assert proc.image_config == P.ImageConfig(patch_size=4, min_pixels=256, max_pixels=4096)
  assert proc.eos_ids == (ids_of[P.IM_END], ids_of[P.ENDOFTEXT]) and proc.pad_id == ids_of[P.ENDOFTEXT]
  text = prompts.chat_text("hi")
  ids = proc.encode(text, [(1, 4, 6)])
  assert (ids == ids_of[P.IMAGE_PAD]).sum() == 6 and (ids == ids_of[P.IM_START]).sum() == 3
  assert proc.decode(ids) == P.expand_image_pads(text, [6])
  with pytest.raises(ValueError, match="image_token_id"):
    P.Processor.from_pretrained(tmp_path / "tok", qv.PRESETS["tiny"])
  with pytest.raises(FileNotFoundError, match="nowhere not found"):
    P.HFChatTokenizer(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    P.HFChatTokenizer(tmp_path / "empty")


def test_prompt_batch():
  proc = P.Processor.tiny()
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  b = P.prompt_batch(proc, images, ["a", "a longer one"], max_prompt_len=120)
  assert b["input_ids"].shape == b["attention_mask"].shape == (2, 120) and b["input_ids"].dtype == np.int32
  assert b["pixel_values"].shape == (128, 96) and b["image_grid_thw"] == ((1, 8, 8),) * 2
  np.testing.assert_array_equal(b["pixel_values"][64:], proc.image(images[1])[0])
  lengths = b["attention_mask"].sum(1)
  assert lengths[1] - lengths[0] == len("a longer one") - 1
  for row, n in zip(b["input_ids"], lengths):  # left padding
    assert (row[:120 - n] == proc.pad_id).all() and row[120 - n] == tokenizers.IM_START_ID
    assert (row == tokenizers.IMAGE_PAD_ID).sum() == 16
  np.testing.assert_array_equal(b["attention_mask"][:, -1], 1)
  same = P.prompt_batch(proc, images.astype(np.int64), "a", max_prompt_len=120)  # integer arrays in range are fine
  np.testing.assert_array_equal(same["input_ids"][0], b["input_ids"][0])


@pytest.mark.parametrize("images, texts, match", [
  (np.zeros((32, 32, 3), np.uint8), "a", r"\(B, H, W, C\) uint8 batch; got shape \(32, 32, 3\)"),
  (np.zeros((1, 32, 32, 4), np.uint8), "a", r"images\[0\] must have 3 channels"),
  (np.zeros((1, 32, 32, 3), np.float32), "a", "must be uint8 in \\[0, 255\\]; got dtype float32"),
  (np.full((1, 32, 32, 3), 300, np.int16), "a", r"values in \[300, 300\]"),
  (np.zeros((2, 32, 32, 3), np.uint8), ["a"], "2 images but 1 user texts"),
  (np.zeros((1, 32, 32, 3), np.uint8), "x" * 60,
   r"prompt 0 is 135 tokens \(16 image \+ 119 text\), 15 over max_prompt_len=120"),
], ids=["rank", "channels", "dtype", "values", "texts", "too_long"])
def test_prompt_batch_errors(images, texts, match):
  with pytest.raises(ValueError, match=match):
    P.prompt_batch(P.Processor.tiny(), images, texts, max_prompt_len=120)
