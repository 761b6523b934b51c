"""Golden outputs of diffusers' SD3Transformer2DModel for tests/test_mmdit.py.

  pip install -e .[reference]
  python tools/make_goldens_mmdit.py

Writes tests/goldens/mmdit_<name>.npz per small random config: the config.json diffusers' save_pretrained
writes, the float32 state dict, NHWC inputs and diffusers' fp32 NHWC output. Also writes
tests/goldens/mmdit_sd35m.json: SD3.5-Medium's config and parameter counts (meta device, no weights).
"""
import json
import pathlib

import numpy as np
import torch
from diffusers import SD3Transformer2DModel

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens"
SMALL = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=16,
      num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=20,
      pos_embed_max_size=8)
CONFIGS = {
  "plain": dict(SMALL, dual_attention_layers=(), qk_norm=None),
  "dual_qknorm": dict(SMALL, dual_attention_layers=(0, 1), qk_norm="rms_norm"),
}
SD35M = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
      num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
      pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")


def randomize_(model: torch.nn.Module, gen: torch.Generator) -> None:
  # Every parameter random: adaLN and output layers are zero-initialised in training code, and a zero path
  # would pass the parity test without being checked. RMSNorm scales stay near 1 to keep attention peaked.
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = 0.1 * torch.randn(p.shape, generator=gen)
      p.copy_(1.0 + noise if ".norm_" in name else noise)


def golden(name: str, cfg: dict) -> None:
  gen = torch.Generator().manual_seed(0)
  model = SD3Transformer2DModel(**cfg).eval()
  randomize_(model, gen)
  x = torch.randn(2, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], generator=gen)
  ctx = torch.randn(2, 5, cfg["joint_attention_dim"], generator=gen)
  pooled = torch.randn(2, cfg["pooled_projection_dim"], generator=gen)
  timestep = torch.tensor([1000 * 0.9, 1000 * 0.3])
  with torch.no_grad():
    out = model(x, ctx, pooled, timestep).sample
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  weights = {f"weights/{k}": v.float().numpy() for k, v in model.state_dict().items()}
  path = OUT / f"mmdit_{name}.npz"
  np.savez_compressed(path, config=model.to_json_string(), hidden_states=nhwc(x),
            encoder_hidden_states=ctx.numpy(), pooled_projections=pooled.numpy(),
            timestep=timestep.numpy(), output=nhwc(out), **weights)
  print(f"{path}: {path.stat().st_size / 1e3:.0f} kB, |out| max {out.abs().max():.3f}")


def sd35m_counts() -> None:
  with torch.device("meta"):
    model = SD3Transformer2DModel(**SD35M)
  counts = dict(
    config=dict(model.config),
    num_parameters=sum(p.numel() for p in model.parameters()),
    num_state_dict_elements=sum(v.numel() for v in model.state_dict().values()),  # + pos_embed buffer
  )
  (OUT / "mmdit_sd35m.json").write_text(json.dumps(counts, indent=1) + "\n")
  print(counts["num_parameters"], counts["num_state_dict_elements"])


if __name__ == "__main__":
  OUT.mkdir(parents=True, exist_ok=True)
  for name, cfg in CONFIGS.items():
    golden(name, cfg)
  sd35m_counts()
