"""A diffusers / PEFT LoRA for the golden SD3 pipeline's transformer and its outputs, for tests/test_lora.py;
then the reverse check: a LoRA written by emojax.models.lora loads in diffusers and gives the same output.

  pip install -e .[reference]
  python tools/make_goldens_lora.py

Writes tests/goldens/sd3_lora/pytorch_lora_weights.safetensors (StableDiffusion3Pipeline.save_lora_weights:
rank 4, alpha 8, Flow-GRPO's eight attention targets, random A and B) and tests/goldens/sd3_lora.npz (fixed
transformer inputs, the output with the LoRA and with adapters disabled).
"""
import pathlib
import tempfile

import numpy as np
import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from emojax.models import lora as lora_lib
from emojax.models import mmdit

GOLDENS = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens"
PIPELINE = GOLDENS / "sd3_pipeline"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def inputs(gen):
  return dict(hidden_states=torch.randn((2, 16, 8, 8), generator=gen),
              encoder_hidden_states=torch.randn((2, 40, 48), generator=gen),
              pooled_projections=torch.randn((2, 40), generator=gen), timestep=torch.tensor([500.0, 125.0]))


def forward(t, x):
  with torch.no_grad():
    return t(**x, return_dict=False)[0].numpy()


def main():
  gen = torch.Generator().manual_seed(0)
  t = SD3Transformer2DModel.from_pretrained(PIPELINE / "transformer").eval()
  x = inputs(gen)
  base = forward(t, x)
  t.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="gaussian"))
  with torch.no_grad():
    for name, p in t.named_parameters():
      if "lora_" in name:
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))
  with_lora = forward(t, x)
  out = GOLDENS / "sd3_lora"
  StableDiffusion3Pipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(t),
                                             transformer_lora_adapter_metadata=t.peft_config["default"].to_dict())
  np.savez_compressed(GOLDENS / "sd3_lora.npz", base=base, with_lora=with_lora,
                      **{k: v.numpy() for k, v in x.items()})
  print(f"{out}: |lora - base| max {np.abs(with_lora - base).max():.3f}")

  # Reverse: emojax reads diffusers' file, writes its own, and diffusers' load_lora_weights reads that.
  _, params = mmdit.from_pretrained(PIPELINE / "transformer")
  adapters, config = lora_lib.load(str(out / "pytorch_lora_weights.safetensors"), params)
  with tempfile.TemporaryDirectory() as d:
    lora_lib.save(f"{d}/pytorch_lora_weights.safetensors", adapters, config)
    pipe = StableDiffusion3Pipeline.from_pretrained(PIPELINE)
    pipe.load_lora_weights(d)
    reread = forward(pipe.transformer.eval(), x)
  diff = np.abs(reread - with_lora).max()
  print(f"diffusers reading emojax's LoRA file: max |diff| {diff:.2e}")
  assert diff < 1e-5, diff


if __name__ == "__main__":
  main()
