"""Golden outputs of transformers' Qwen2_5_VLForConditionalGeneration for tests/test_qwen_vl.py.

  pip install -e .[reference]
  python tools/make_goldens_qwen_vl.py

Writes tests/goldens/qwen_vl_<name>.npz per small random config: the config.json transformers'
save_pretrained writes, the float32 state dict (weights/<key>), input_ids, attention_mask,
pixel_values, image_grid_thw, the position ids and rope deltas of get_rope_index, and the logits of
an fp32 eager-attention forward.

- "tied": tie_word_embeddings, batch 1, one image whose merged grid (3x5) does not fill the 2x2
  windows, so window attention sees windows of 4, 2 and 1 tokens; vision block 1 of 3 is full attention.
  The saved state dict leaves out lm_head.weight, as save_pretrained does for tied weights.
- "untied": separate lm_head, batch 2 with left padding; row 0 holds two images of different
  grids with text between them, row 1 (padded) one image; the vision tower sees all three at once.
"""
import pathlib

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens"
IMAGE, VSTART, VEND = 97, 95, 96
TEXT = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
VISION = dict(depth=3, hidden_size=32, intermediate_size=40, num_heads=2, patch_size=4, temporal_patch_size=2,
              spatial_merge_size=2, window_size=16, fullatt_block_indexes=[1], out_hidden_size=64)
CONFIGS = {
  "tied": dict(tie=True, rope=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0),
               grids=[(1, 6, 10)], rows=[[(5, 0), (4, None)]]),
  # rows: per batch row, (text length, image index or None) segments; image segments are
  # [VSTART, IMAGE * tokens, VEND]. Row 1 is shorter and gets left padding.
  "untied": dict(tie=False, rope=dict(type="mrope", mrope_section=[2, 2, 4]),
                 grids=[(1, 4, 8), (1, 6, 4), (1, 6, 6)], rows=[[(3, 0), (2, 1), (4, None)], [(2, 2), (3, None)]]),
}


def tokens(row, grids, gen):
  ids = []
  for n_text, image in row:
    ids += torch.randint(3, 90, (n_text,), generator=gen).tolist()
    if image is not None:
      t, h, w = grids[image]
      ids += [VSTART] + [IMAGE] * (t * h * w // 4) + [VEND]
  return ids


def golden(name, spec):
  gen = torch.Generator().manual_seed(0)
  config = Qwen2_5_VLConfig(text_config=dict(TEXT, rope_parameters=spec["rope"]), vision_config=VISION,
                            image_token_id=IMAGE, vision_start_token_id=VSTART, vision_end_token_id=VEND,
                            video_token_id=98, tie_word_embeddings=spec["tie"])
  config._attn_implementation = "eager"
  model = Qwen2_5_VLForConditionalGeneration(config).eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():  # norms too: unit scales would hide a swapped mapping
      p.copy_((1.0 if "norm" in pname or "ln_q" in pname else 0.0) + 0.15 * torch.randn(p.shape, generator=gen))
  rows = [tokens(row, spec["grids"], gen) for row in spec["rows"]]
  length = max(map(len, rows))
  ids = torch.zeros(len(rows), length, dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, row in enumerate(rows):
    ids[i, length - len(row):], mask[i, length - len(row):] = torch.tensor(row), 1
  grid = torch.tensor(spec["grids"])
  c = VISION
  pixels = torch.randn(int(grid.prod(-1).sum()), 3 * c["temporal_patch_size"] * c["patch_size"] ** 2, generator=gen)
  types = (ids == IMAGE).int()
  with torch.no_grad():
    position_ids, deltas = model.model.get_rope_index(ids, types, image_grid_thw=grid, attention_mask=mask)
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid,
                   mm_token_type_ids=types).logits
  state = model.state_dict()
  if spec["tie"]:
    state.pop("lm_head.weight")
  weights = {f"weights/{k}": v.float().numpy() for k, v in state.items()}
  path = OUT / f"qwen_vl_{name}.npz"
  np.savez_compressed(path, config=config.to_json_string(), input_ids=ids.numpy().astype(np.int32),
                      attention_mask=mask.numpy().astype(np.int32), pixel_values=pixels.numpy(),
                      image_grid_thw=grid.numpy().astype(np.int32), position_ids=position_ids.numpy().astype(np.int32),
                      rope_deltas=deltas.numpy().astype(np.int32), logits=logits.numpy(), **weights)
  print(f"{path}: {path.stat().st_size / 1e3:.0f} kB, ids {tuple(ids.shape)}, |logits| max {logits.abs().max():.2f}")


if __name__ == "__main__":
  for name, spec in CONFIGS.items():
    golden(name, spec)
