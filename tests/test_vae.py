"""The Flax AutoencoderKL against diffusers' (goldens and directories from tools/make_goldens_vae.py): the
posterior and the decoder on a non-square batch, for the SD3 layout (16 channels, no quant convs) and the
SD1/SDXL one; the latent scaling as SD3's pipelines apply it; bad directories and weights."""
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emojax.io import hf_weights
from emojax.models import vae as vae_lib
from conftest import GOLDENS, read_golden

NAMES = ("sd3", "quant")


@functools.cache
def model(name):
  return vae_lib.from_pretrained(GOLDENS / f"vae_{name}")


def nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


@pytest.mark.parametrize("name", NAMES)
def test_encode_and_decode_match_diffusers(name):
  g, (vae, params) = read_golden(f"vae_{name}").arrays, model(name)
  mean, logvar = jax.jit(lambda p, x: vae.apply({"params": p}, x, method="encode"))(params, nhwc(g["image"]))
  np.testing.assert_allclose(mean, nhwc(g["mean"]), atol=1e-4, rtol=0)
  np.testing.assert_allclose(logvar, nhwc(g["logvar"]), atol=1e-4, rtol=0)
  decoded = jax.jit(lambda p, z: vae.apply({"params": p}, z, method="decode"))(params, nhwc(g["latents"]))
  np.testing.assert_allclose(decoded, nhwc(g["decoded"]), atol=1e-4, rtol=0)
  assert mean.shape[1:3] == (16 // vae.config.downsample_factor, 24 // vae.config.downsample_factor)


def test_config_reads_the_layout_and_factors():
  sd3, quant = model("sd3")[0].config, model("quant")[0].config
  assert (sd3.latent_channels, sd3.use_quant_conv, sd3.shift_factor) == (16, False, 0.0609)
  assert (quant.latent_channels, quant.use_quant_conv, quant.shift_factor) == (4, True, None)
  assert "quant_conv" in model("quant")[1] and "quant_conv" not in model("sd3")[1]


def test_latent_scaling_round_trips_as_the_sd3_pipeline():
  c = model("sd3")[0].config
  z = jnp.linspace(-2, 2, 12).reshape(1, 1, 3, 4)
  x = vae_lib.to_diffusion_latents(z, c)
  np.testing.assert_allclose(x, (z - 0.0609) * 1.5305, rtol=1e-6)
  np.testing.assert_allclose(vae_lib.from_diffusion_latents(x, c), z, atol=1e-6)
  q = model("quant")[0].config  # no shift factor: scaling only
  np.testing.assert_allclose(vae_lib.to_diffusion_latents(z, q), z * q.scaling_factor, rtol=1e-6)


def test_posterior_sample_has_the_posterior_moments():
  mean, logvar = jnp.full((4096,), 0.5), jnp.full((4096,), np.log(0.09))
  s = vae_lib.sample_posterior(mean, logvar, jax.random.PRNGKey(0))
  assert abs(float(s.mean()) - 0.5) < 0.02 and abs(float(s.std()) - 0.3) < 0.02


def test_bad_directories_and_weights_fail_with_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="put a diffusers AutoencoderKL directory"):
    vae_lib.from_pretrained(tmp_path)
  d = tmp_path / "vae"
  shutil.copytree(GOLDENS / "vae_sd3", d)
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps(dict(cfg, _class_name="AutoencoderTiny")))
  with pytest.raises(ValueError, match="not an AutoencoderKL"):
    vae_lib.from_pretrained(d)
  (d / "config.json").write_text(json.dumps(dict(cfg, latent_channels=8)))
  with pytest.raises(ValueError, match="has shape"):
    vae_lib.from_pretrained(d)
  (d / "config.json").write_text(json.dumps(cfg))
  state = hf_weights.read_safetensors(str(d), "diffusion_pytorch_model", "x")
  state.pop("decoder.mid_block.attentions.0.to_q.weight")
  hf_weights.write_pretrained(str(d), "diffusion_pytorch_model", state, cfg)
  with pytest.raises(ValueError, match=r"missing \[decoder.mid_block.attentions_0.to_q.kernel\], unexpected \[\]"):
    vae_lib.from_pretrained(d)
  (d / "diffusion_pytorch_model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="put the VAE weights"):
    vae_lib.from_pretrained(d)


def test_old_attention_names_load_as_the_new_ones():
  state = hf_weights.read_safetensors(str(GOLDENS / "vae_quant"), "diffusion_pytorch_model", "x")
  old = {k.replace("to_q.", "query.").replace("to_out.0.", "proj_attn."): v for k, v in state.items()}
  c = model("quant")[0].config
  new, renamed = vae_lib.load_hf_vae_params(state, c), vae_lib.load_hf_vae_params(old, c)
  jax.tree.map(np.testing.assert_array_equal, new, renamed)
