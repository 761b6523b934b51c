"""Golden CLIP directories and outputs of transformers' CLIPModel for tests/test_clip.py.

  pip install -e .[reference]
  python tools/make_goldens_clip.py

Writes tests/goldens/clip_<name>/, a small random transformers CLIP directory in the real layout
(config.json, model.safetensors, a real byte-level BPE tokenizer trained on EmoShapes captions by
`emojax.io.clip_tokenizer`, preprocessor_config.json of CLIPImageProcessor), and
tests/goldens/clip_<name>.npz: the prompts' input_ids and attention_mask from that tokenizer,
CLIPImageProcessorPil's pixel_values (transposed to NHWC) for square images and for images that need
resizing and cropping, CLIPModel's text_embeds, image_embeds and logits_per_image, and the scores
written out over CLIPModel's outputs as their references define them (torchmetrics 1.9 cannot read
transformers 5's CLIP outputs): PickScore exp(logit_scale)·cos, CLIP-Score 100·max(cos, 0), and
CLIP-IQA softmax(100·cos over an antonym pair)[0].

Two configs: "legacy" (quick_gelu, eos_token_id 2: transformers pools at argmax(input_ids), as for
OpenAI CLIP) and "gelu" (eos_token_id the tokenizer's <|endoftext|>: pooled at the first EOS, as
OpenCLIP-converted models such as PickScore's CLIP-H).
"""
import pathlib
import shutil

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from emojax.data import emoshapes
from emojax.io import clip_tokenizer

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens"
MAX_LEN, IMAGE, PATCH = 16, 32, 8
PROMPTS = ["a circle at the top left", "a bright vivid warm star in the center, on a dim muted cool background",
           "Good photo.", "a dark grey ring on the right and a square at the bottom"]
IQA_PAIRS = {"default": ("Good photo.", "Bad photo."), "tiny": ("a clean picture", "a noisy picture")}


def corpus():
  ex = [emoshapes.make_example(3, i) for i in range(400)]
  return [e["prompt"] for e in ex] + [e["emotional_prompt"] for e in ex] + [t for p in IQA_PAIRS.values() for t in p]


def images(rng):
  """Square EmoShapes images (no resize needed) and the same content at sizes that need resize + crop."""
  square = np.stack([emoshapes.make_example(11, i)["image"] for i in range(4)])
  from PIL import Image
  odd = [np.asarray(Image.fromarray(square[0]).resize((57, 40))), np.asarray(Image.fromarray(square[1]).resize((45, 61))),
         rng.integers(0, 256, (24, 37, 3), dtype=np.uint8), rng.integers(0, 256, (70, 70, 3), dtype=np.uint8)]
  return square, odd


def randomize_(model, gen):
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = 0.1 * torch.randn(p.shape, generator=gen)
      if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + noise)
      elif name == "logit_scale":
        p.copy_(torch.tensor(2.3))
      else:
        p.copy_(noise)


def golden(name, act, legacy, tokenizer, rng):
  directory = OUT / f"clip_{name}"
  shutil.rmtree(directory, ignore_errors=True)
  tokenizer.save_pretrained(directory)
  eos = 2 if legacy else tokenizer.eos_token_id
  text = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=MAX_LEN, hidden_act=act, bos_token_id=tokenizer.bos_token_id,
              eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
  vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, image_size=IMAGE,
                patch_size=PATCH, hidden_act=act)
  model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
  randomize_(model, torch.Generator().manual_seed(0))
  model.save_pretrained(directory)
  processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
  processor.save_pretrained(directory)

  tok = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
  square, odd = images(rng)
  out = {"prompts": np.array(PROMPTS), "input_ids": tok["input_ids"].numpy().astype(np.int32),
         "attention_mask": tok["attention_mask"].numpy().astype(np.int32)}
  with torch.no_grad():
    for kind, ims in (("square", list(square)), ("resized", odd)):
      px = processor(images=ims, return_tensors="pt")["pixel_values"]
      res = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=px)
      cos = (res.image_embeds * res.text_embeds).sum(-1)  # image i with prompt i
      out[f"{kind}_images"] = np.stack(ims) if kind == "square" else np.empty(0)
      out[f"{kind}_pixel_values"] = px.permute(0, 2, 3, 1).numpy()
      out[f"{kind}_text_embeds"], out[f"{kind}_image_embeds"] = res.text_embeds.numpy(), res.image_embeds.numpy()
      out[f"{kind}_logits_per_image"] = res.logits_per_image.numpy()
      out[f"{kind}_pickscore"] = (model.logit_scale.exp() * cos).numpy()
      out[f"{kind}_clip_score"] = (100 * torch.clamp(cos, min=0)).numpy()
      for pair_name, pair in IQA_PAIRS.items():
        ptok = tokenizer(list(pair), padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        anchors = model.get_text_features(**ptok)
        anchors = getattr(anchors, "pooler_output", anchors)
        anchors = anchors / anchors.norm(dim=-1, keepdim=True)
        out[f"{kind}_clip_iqa_{pair_name}"] = (100 * res.image_embeds @ anchors.T).softmax(-1)[:, 0].numpy()
  for i, im in enumerate(odd):
    out[f"resized_image_{i}"] = im
  np.savez_compressed(OUT / f"clip_{name}.npz", **out)
  print(f"{directory}: {sum(f.stat().st_size for f in directory.iterdir()) / 1e3:.0f} kB; eos_token_id {eos}; "
        f"|pickscore| max {np.abs(out['square_pickscore']).max():.3f}")


def main():
  tmp = OUT / "_clip_tokenizer"
  tokenizer = clip_tokenizer.train(corpus(), vocab_size=320, directory=str(tmp), max_length=MAX_LEN)
  shutil.rmtree(tmp)
  rng = np.random.default_rng(0)
  golden("legacy", "quick_gelu", True, tokenizer, rng)
  golden("gelu", "gelu", False, tokenizer, rng)


if __name__ == "__main__":
  main()
