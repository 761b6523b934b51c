"""Golden outputs of diffusers' AutoencoderKL for tests/test_vae.py.

  pip install -e .[reference]
  python tools/make_goldens_vae.py

Per small random config, writes tests/goldens/vae_<name>/ as diffusers' save_pretrained lays a VAE
out (config.json + diffusion_pytorch_model.safetensors) and tests/goldens/vae_<name>.npz with a
non-square image batch, the encoder's posterior (mean, logvar) and the decoder's output for fixed
latents. "sd3" has the SD3 family's shape (16 latent channels, no quant convs, a shift factor) at
tiny widths; "quant" the SD1/SDXL one (4 channels, quant and post-quant convs, no shift factor).
"""
import pathlib

import numpy as np
import torch
from diffusers import AutoencoderKL

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens"
CONFIGS = {
    "sd3": dict(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=4, latent_channels=16,
                use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609,
                sample_size=32),
    "quant": dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=2, norm_num_groups=4, latent_channels=4,
                  sample_size=32),
}


def golden(name: str, cfg: dict) -> None:
  torch.manual_seed(0)
  vae = AutoencoderKL(**cfg).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for key, p in vae.named_parameters():  # norms and biases off their defaults: a swapped mapping shows
      if "norm" in key and key.endswith("weight"):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
      elif key.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
  image = torch.rand((2, 3, 16, 24), generator=gen) * 2 - 1
  down = 2 ** (len(cfg["block_out_channels"]) - 1)
  latents = torch.randn((2, cfg["latent_channels"], 16 // down, 24 // down), generator=gen)
  with torch.no_grad():
    posterior = vae.encode(image).latent_dist
    decoded = vae.decode(latents).sample
  vae.save_pretrained(OUT / f"vae_{name}", safe_serialization=True)
  path = OUT / f"vae_{name}.npz"
  np.savez_compressed(path, image=image.numpy(), mean=posterior.mean.numpy(), logvar=posterior.logvar.numpy(),
                      latents=latents.numpy(), decoded=decoded.numpy())
  print(f"{path}: |mean| max {posterior.mean.abs().max():.3f}, |decoded| max {decoded.abs().max():.3f}")


if __name__ == "__main__":
  for name, cfg in CONFIGS.items():
    golden(name, cfg)
