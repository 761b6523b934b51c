"""Golden outputs of transformers' CLIPTextModelWithProjection for tests/test_text_encoder.py.

  pip install -e .[reference]
  python tools/make_goldens_clip_text.py

Writes tests/goldens/clip_text_<name>.npz per small random config: the config.json transformers'
save_pretrained writes, the float32 state dict (weights/<key>), input_ids, last_hidden_state,
hidden_states[-2] (penultimate, what SD3 feeds the MMDiT) and text_embeds. Two configs because
transformers pools differently by eos id: eos_token_id == 2 (legacy, OpenAI CLIP / SD3) pools at
argmax(input_ids); any other id pools at its first occurrence. The ids are chosen so the two rules
pick different rows in both goldens.
"""
import pathlib

import numpy as np
import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens"
SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
      max_position_embeddings=16, projection_dim=24, hidden_act="quick_gelu", bos_token_id=1, pad_token_id=0)
CONFIGS = {
  "eos2": dict(SMALL, eos_token_id=2),  # legacy: pooled at argmax(input_ids)
  "eos49": dict(SMALL, eos_token_id=49),  # pooled at the first EOS (not the largest id here)
}


def input_ids(eos: int, gen: torch.Generator) -> torch.Tensor:
  # Random ids with an early EOS, a second EOS later (first-occurrence must win) and a large
  # id after the first EOS (so argmax and first-EOS pooling pick different rows when eos=2).
  ids = torch.randint(3, 90, (2, 16), generator=gen)
  ids[ids == eos] = 3
  ids[0, 5], ids[0, 11], ids[0, 13] = eos, eos, 97
  ids[1, 9], ids[1, 2] = eos, 96
  return ids


def golden(name: str, cfg: dict) -> None:
  gen = torch.Generator().manual_seed(0)
  model = CLIPTextModelWithProjection(CLIPTextConfig(**cfg)).eval()
  with torch.no_grad():
    for p in model.parameters():  # LayerNorms too: unit scale / zero bias would hide a swapped mapping
      p.copy_(0.1 * torch.randn(p.shape, generator=gen))
  ids = input_ids(cfg["eos_token_id"], gen)
  with torch.no_grad():
    out = model(input_ids=ids, output_hidden_states=True)
  weights = {f"weights/{k}": v.float().numpy() for k, v in model.state_dict().items()}
  path = OUT / f"clip_text_{name}.npz"
  np.savez_compressed(path, config=model.config.to_json_string(), input_ids=ids.numpy().astype(np.int32),
            last_hidden_state=out.last_hidden_state.numpy(),
            penultimate=out.hidden_states[-2].numpy(), text_embeds=out.text_embeds.numpy(), **weights)
  print(f"{path}: {path.stat().st_size / 1e3:.0f} kB, |embeds| max {out.text_embeds.abs().max():.3f}")


if __name__ == "__main__":
  for name, cfg in CONFIGS.items():
    golden(name, cfg)
