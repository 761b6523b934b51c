"""T5 encoder parity with transformers' T5EncoderModel (goldens from tools/make_goldens_t5.py), the relative
position buckets, weight import and config errors."""
import dataclasses
import functools

import jax
import numpy as np
import pytest

from emojax.io import hf_weights
from emojax.models import t5
from conftest import read_golden

NAMES = ("gated", "relu")


@functools.cache
def forward(config):
  return jax.jit(lambda p, ids, mask: t5.T5Encoder(config).apply({"params": p}, ids, mask))


def err(a, b):
  return float(np.abs(np.asarray(a) - b).max())


@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers(name):
  d, state, g = read_golden(f"t5_{name}")
  config = t5.T5Config.from_hf_dict(d)
  assert config.feed_forward_proj == d["feed_forward_proj"] and config.num_layers == d["num_layers"]
  params = t5.load_hf_t5_params(state, config)
  out = np.asarray(forward(config)(params, g["input_ids"], g["attention_mask"]))
  want, real = g["last_hidden_state"], g["attention_mask"].astype(bool)
  # Padded positions are compared too: they attend to the real tokens in both implementations.
  print(f"{name}: max abs err real tokens {err(out[real], want[real]):.1e}, padding {err(out[~real], want[~real]):.1e}")
  assert err(out, want) <= 1e-4
  # The mask matters: without it the padded row changes (and the unpadded row does not).
  unmasked = np.asarray(forward(config)(params, g["input_ids"], None))
  assert err(unmasked[0], want[0]) <= 1e-4 and err(unmasked[1], want[1]) > 1e-3
  if "last_hidden_state_silu" in g:
    silu = dataclasses.replace(config, feed_forward_proj="gated-silu")
    out = forward(silu)(params, g["input_ids"], g["attention_mask"])
    print(f"{name} as gated-silu: max abs err {err(out, g['last_hidden_state_silu']):.1e}")
    assert err(out, g["last_hidden_state_silu"]) <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_relative_position_bucket(name):
  d, _, g = read_golden(f"t5_{name}")
  pos = np.arange(g["relative_position_bucket"].shape[0])
  got = t5.relative_position_bucket(pos[None, :] - pos[:, None], d["relative_attention_num_buckets"],
                                    d["relative_attention_max_distance"])
  np.testing.assert_array_equal(got, g["relative_position_bucket"])
  assert g["relative_position_bucket"].max() == d["relative_attention_num_buckets"] - 1  # past max_distance
  rel = np.arange(-512, 513)  # transformers' defaults (SD3's T5-XXL): 32 buckets, max distance 128
  np.testing.assert_array_equal(t5.relative_position_bucket(rel), g["bucket_default"])


def test_from_pretrained(tmp_path):
  d, state, g = read_golden("t5_gated")
  with pytest.raises(FileNotFoundError, match="config.json"):
    t5.from_pretrained(tmp_path)
  hf_weights.write_pretrained(str(tmp_path), "model", state, d)
  module, params = t5.from_pretrained(tmp_path)
  assert module.config == t5.T5Config.from_hf_dict(d)
  assert err(forward(module.config)(params, g["input_ids"], g["attention_mask"]), g["last_hidden_state"]) <= 1e-4
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    t5.from_pretrained(tmp_path)


def test_weight_keys():
  d, state, _ = read_golden("t5_gated")
  config = t5.T5Config.from_hf_dict(d)
  ref = t5.load_hf_t5_params(state, config)
  same = lambda p: jax.tree.all(jax.tree.map(np.array_equal, p, ref))
  # The tied embedding under either name (or both); a full T5ForConditionalGeneration's decoder is ignored.
  alias = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v for k, v in state.items()}
  assert same(t5.load_hf_t5_params(alias, config))
  full = {**state, "encoder.embed_tokens.weight": state["shared.weight"], "lm_head.weight": state["shared.weight"],
          "decoder.final_layer_norm.weight": np.ones(32, np.float32)}
  assert same(t5.load_hf_t5_params(full, config))
  key = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
  with pytest.raises(ValueError, match=f"missing \\[{key}\\]"):
    t5.load_hf_t5_params({k: v for k, v in state.items() if k != key}, config)
  with pytest.raises(ValueError, match="missing \\[shared.weight\\]"):
    t5.load_hf_t5_params({k: v for k, v in state.items() if k != "shared.weight"}, config)
  with pytest.raises(ValueError, match="unexpected \\[encoder.block.2.layer.0.layer_norm.weight\\]"):
    t5.load_hf_t5_params({**state, "encoder.block.2.layer.0.layer_norm.weight": np.ones(32, np.float32)}, config)
  with pytest.raises(ValueError, match="encoder.final_layer_norm.weight has shape \\(31,\\)"):
    t5.load_hf_t5_params({**state, "encoder.final_layer_norm.weight": np.ones(31, np.float32)}, config)
  with pytest.raises(ValueError, match="missing \\[.*wi\\.weight.*unexpected \\[.*wi_0\\.weight"):
    t5.load_hf_t5_params(state, dataclasses.replace(config, feed_forward_proj="relu"))


def test_config():
  d, _, _ = read_golden("t5_gated")
  assert len(d) > 15  # a real config.json: architectures, dropout_rate, is_encoder_decoder, ... are ignored
  c = t5.T5Config.from_hf_dict(d)
  assert (c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.num_heads) == (99, 32, 8, 37, 4) and c.is_gated_act
  assert (c.relative_attention_num_buckets, c.relative_attention_max_distance) == (8, 16)
  assert t5.T5Config.from_hf_dict({}) == t5.T5Config()  # transformers' defaults
  assert t5.T5Config.from_dict(c.to_dict()) == c
  for ff in ("gated-swish", "gelu"):
    with pytest.raises(ValueError, match=f"feed_forward_proj '{ff}' not supported"):
      t5.T5Config.from_hf_dict(dict(d, feed_forward_proj=ff))
  with pytest.raises(ValueError, match="model_type 'bert'"):
    t5.T5Config.from_hf_dict(dict(d, model_type="bert"))
