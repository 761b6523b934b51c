"""Golden transformers 5 Qwen2.5-VL processor directories, saved both ways, for tests/test_processor_layouts.py.

  python3.11 -m venv VENV  # a throwaway one: Qwen2_5_VLProcessor's video processor needs torch + torchvision
  VENV/bin/pip install 'transformers>=5' pillow numpy torch torchvision
  VENV/bin/python tools/make_goldens_processors.py

Writes tests/goldens/processors/:
  qwen25vl_nested/  Qwen2_5_VLProcessor.save_pretrained: processor_config.json with the image (and video)
                    processor nested under "image_processor" ("video_processor"), tokenizer files; no
                    preprocessor_config.json.
  qwen25vl_flat/    the image processor's own save_pretrained (preprocessor_config.json) + tokenizer files.
  qwen25vl.npz      per image: the uint8 image, and what transformers makes of it from either directory
                    (AutoProcessor.from_pretrained with the PIL image backend; the script checks that both
                    give the same): image_grid_thw, input_ids of a one-image chat turn, and pixel_values as
                    uint8 grey levels in the processor's (rows, C*T*P*P) layout (lossless: the script checks
                    that (levels/255 - mean)/std is transformers' float32 to 1e-6); and the grid HF's default
                    min/max pixels give.

Both directories allow 8..40 merged tokens (min/max pixels 28*28*8, 28*28*40), so a 123x517 image is a 6x24
patch grid where the defaults make 8x36. The tokenizer is byte-level with Qwen's chat/vision tokens (no download).
"""
import pathlib
import shutil

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoImageProcessor, AutoProcessor, PreTrainedTokenizerFast, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens" / "processors"
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 8, 28 * 28 * 40
MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.3, 0.2]  # not CLIP's: a reader that drops them shows
SIZES = {"wide": (123, 517), "tall": (700, 260), "small": (20, 30), "exact": (84, 112)}  # (H, W)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TEXT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Rate it.<|im_end|>\n<|im_start|>assistant\n"


def image(h, w):
  """Smooth shading in 4x4 cells (small in the .npz), hard-edged blocks and one-pixel lines: resampling
  rings and clips on them."""
  y, x = np.mgrid[:h, :w] // 4 * 4
  im = np.stack([128 + 100 * np.sin(x / 9 + c) * np.cos(y / 13 - c) for c in range(3)], -1)
  im[(x // 16 + y // 12) % 5 == 0] = (250, 20, 120)
  im[::23] = 255
  im[:, ::29] = 0
  return np.clip(np.round(im), 0, 255).astype(np.uint8)


def tokenizer():
  vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", additional_special_tokens=SPECIALS)


def levels(pixel_values, mean, std, t, p):
  """float32 pixel_values -> the uint8 grey levels they normalise (checked exact)."""
  x = pixel_values.reshape(len(pixel_values), 3, t * p * p) * np.float32(std)[:, None] + np.float32(mean)[:, None]
  out = np.round(x * 255)
  assert np.abs(x * 255 - out).max() < 1e-3 and out.min() >= 0 and out.max() <= 255
  out = out.astype(np.uint8).reshape(pixel_values.shape)
  back = (out.reshape(x.shape) / np.float32(255) - np.float32(mean)[:, None]) / np.float32(std)[:, None]
  np.testing.assert_allclose(back.reshape(pixel_values.shape), pixel_values, atol=1e-6, rtol=0)
  return out


def main():
  shutil.rmtree(OUT / "qwen25vl_nested", ignore_errors=True)
  shutil.rmtree(OUT / "qwen25vl_flat", ignore_errors=True)
  tok = tokenizer()
  ip = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, image_mean=MEAN, image_std=STD)
  Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor()).save_pretrained(
      OUT / "qwen25vl_nested")
  ip.save_pretrained(OUT / "qwen25vl_flat")
  tok.save_pretrained(OUT / "qwen25vl_flat")
  assert not (OUT / "qwen25vl_nested" / "preprocessor_config.json").exists()
  assert not (OUT / "qwen25vl_flat" / "processor_config.json").exists()

  default = Qwen2VLImageProcessorPil()
  out = {"text": np.array(TEXT)}
  for layout in ("nested", "flat"):
    d = OUT / f"qwen25vl_{layout}"
    pil = AutoImageProcessor.from_pretrained(d, backend="pil")  # the torchvision backend resizes differently
    assert type(pil).__name__ == "Qwen2VLImageProcessorPil" and pil.size["longest_edge"] == MAX_PIXELS
    assert list(pil.image_std) == STD
    if layout == "nested":
      proc = AutoProcessor.from_pretrained(d, image_processor=pil)
    else:  # a flat directory has no processor file: the processor is put together from its parts
      proc = Qwen2_5_VLProcessor(image_processor=pil, tokenizer=AutoProcessor.from_pretrained(d).tokenizer,
                                 video_processor=Qwen2VLVideoProcessor())
    for name, (h, w) in SIZES.items():
      im = image(h, w)
      got = proc(images=[im], text=[TEXT], return_tensors="np")
      row = {f"grid_{name}": got["image_grid_thw"][0], f"input_ids_{name}": got["input_ids"][0].astype(np.int32),
             f"levels_{name}": levels(got["pixel_values"], pil.image_mean, pil.image_std, pil.temporal_patch_size,
                                      pil.patch_size)}
      for k, v in row.items():  # both layouts hold the same settings: one copy
        assert k not in out or np.array_equal(out[k], v), (layout, k)
        out[k] = v
      out[f"image_{name}"] = im
      out[f"default_grid_{name}"] = default(images=[im], return_tensors="np")["image_grid_thw"][0]
      print(layout, name, (h, w), "grid", out[f"grid_{name}"], "defaults", out[f"default_grid_{name}"])
  np.savez_compressed(OUT / "qwen25vl.npz", **out)
  for f in sorted(OUT.rglob("*")):
    if f.is_file():
      print(f.relative_to(OUT), f.stat().st_size)


if __name__ == "__main__":
  main()
