"""CLIP text tower parity with transformers' CLIPTextModelWithProjection (goldens from
tools/make_goldens_clip_text.py), weight import, and the byte tokenizer."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from emojax.models import text_encoder as te
from emojax.io import tokenizers
from conftest import read_golden

NAMES = ("eos2", "eos49")


@functools.cache
def forward(config):
  return jax.jit(lambda p, x: te.TextEncoder(config).apply({"params": p}, x))


def run(config, params, ids):
  return forward(config)(params, ids)


def err(a, b):
  return float(np.abs(np.asarray(a) - b).max())


@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers(name):
  d, state, want = read_golden(f"clip_text_{name}")
  ids = want["input_ids"]
  config = te.TextEncoderConfig.from_hf_dict(d)
  assert config.pooling == ("argmax_ids" if d["eos_token_id"] == 2 else "first_eos")
  params = te.load_hf_clip_text_params(state, config)
  last, pooled = run(config, params, ids)
  penult, pooled2 = run(dataclasses.replace(config, output_layer=-2), params, ids)
  errs = err(last, want["last_hidden_state"]), err(penult, want["penultimate"]), err(pooled, want["text_embeds"])
  print(f"{name}: max abs err last {errs[0]:.1e} penultimate {errs[1]:.1e} text_embeds {errs[2]:.1e}")
  assert max(errs) <= 1e-5
  np.testing.assert_array_equal(pooled, pooled2)
  # The goldens' ids make the two pooling rules pick different rows: the other rule must not match.
  other = dataclasses.replace(config, pooling={"argmax_ids": "first_eos", "first_eos": "argmax_ids"}[config.pooling])
  assert err(run(other, params, ids)[1], want["text_embeds"]) > 1e-3


def test_from_pretrained(tmp_path):
  d, state, want = read_golden("clip_text_eos49")
  ids = want["input_ids"]
  (tmp_path / "config.json").write_text(json.dumps(dict(d, architectures=["CLIPTextModelWithProjection"],
                                                        torch_dtype="float32")))
  save_file({**state, "text_model.embeddings.position_ids": np.arange(16)[None]}, str(tmp_path / "model.safetensors"))
  module, params = te.from_pretrained(tmp_path, output_layer=-2)
  assert module.config.output_layer == -2 and module.config.vocab_size == 99 and module.config.eos_token_id == 49
  tokens, pooled = run(module.config, params, ids)
  assert err(tokens, want["penultimate"]) <= 1e-5 and err(pooled, want["text_embeds"]) <= 1e-5
  # A full CLIPConfig: text_config nested, projection_dim at top level, vision keys in the weights.
  full = {"model_type": "clip", "projection_dim": 24, "text_config": dict(d, projection_dim=512), "vision_config": {}}
  (tmp_path / "config.json").write_text(json.dumps(full))
  save_file({**state, "visual_projection.weight": np.zeros((24, 8), np.float32), "logit_scale": np.zeros(())},
            str(tmp_path / "model.safetensors"))
  module, params = te.TextEncoder.from_pretrained(tmp_path)
  assert module.config.projection_dim == 24
  assert err(run(module.config, params, ids)[1], want["text_embeds"]) <= 1e-5
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    te.from_pretrained(tmp_path)


def test_load_errors():
  d, state, _ = read_golden("clip_text_eos49")
  config = te.TextEncoderConfig.from_hf_dict(d)
  bad = {k: v for k, v in state.items() if k != "text_projection.weight"}
  bad["text_model.encoder.layers.9.mlp.fc1.weight"] = np.zeros(1)
  with pytest.raises(ValueError, match=r"missing \[text_projection.weight\].*unexpected \[text_model.encoder.layers.9"):
    te.load_hf_clip_text_params(bad, config)
  with pytest.raises(ValueError, match="shape"):
    te.load_hf_clip_text_params(state, dataclasses.replace(config, intermediate_size=36))
  with pytest.raises(ValueError, match="merge_size"):
    te.load_hf_clip_text_params(state, dataclasses.replace(config, merge_size=4))


def test_config_dicts():
  with pytest.raises(ValueError, match=r"unknown TextEncoderConfig fields \['hiden_size'\]"):
    te.TextEncoderConfig.from_dict({"hiden_size": 8})
  # transformers' defaults fill keys a config.json omits; unrelated keys are ignored.
  c = te.TextEncoderConfig.from_hf_dict({"architectures": ["X"], "bos_token_id": 0, "hidden_act": "gelu"})
  assert (c.vocab_size, c.max_position_embeddings, c.eos_token_id, c.pooling) == (49408, 77, 49407, "first_eos")
  with pytest.raises(ValueError, match="hidden_act"):
    te.TextEncoderConfig.from_hf_dict({"hidden_act": "swish"})


def test_gelu_is_exact_erf():  # transformers' "gelu" (CLIP-G / SD3 text_encoder_2) is not the tanh approximation
  x = jnp.linspace(-4, 4, 101)
  np.testing.assert_allclose(te.ACTIVATIONS["gelu"](x), 0.5 * x * (1 + jax.scipy.special.erf(x / np.sqrt(2))), atol=1e-6)


def test_byte_tokenizer():
  tok = tokenizers.ByteTokenizer(max_length=32)
  text = "joy — ünïcødé 😀"
  ids = tok([text, "a"])
  assert ids.shape == (2, 32) and ids.dtype == np.int32
  assert tok.decode(ids[0]) == text
  assert list(ids[1]) == [tok.bos_id, ord("a") + 3, tok.eos_id] + [tok.pad_id] * 29
  long = tokenizers.ByteTokenizer(24)(["x" * 100])[0]
  assert long[-1] == tok.eos_id and (long == tok.eos_id).sum() == 1 and tok.decode(long) == "x" * 22
  with pytest.raises(ValueError):
    tokenizers.ByteTokenizer(2)


def test_merge_size_path():
  c = dataclasses.replace(te.PRESETS["tiny"], word_merge=0, merge_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          projection_dim=8, max_position_embeddings=6)
  ids = tokenizers.ByteTokenizer(24)(["calm", "furious anger"])
  params = jax.eval_shape(te.TextEncoder(c).init, jax.random.key(0), ids)["params"]
  assert params["merge"]["kernel"].shape == (4 * 16, 16)
  tokens, pooled = jax.eval_shape(forward(c), params, ids)
  assert tokens.shape == (2, 6, 16) and pooled.shape == (2, 8)
  with pytest.raises(ValueError, match="not a multiple of merge_size=4"):
    jax.eval_shape(forward(c), params, ids[:, :22])
  with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
    jax.eval_shape(forward(c), params, np.zeros((1, 28), np.int32))


def test_word_merge_tokens_are_words():
  """One token per word: extra spaces change nothing, a word's token does not depend on where its
  bytes sit, bytes past word_merge are dropped, and the pooled row is the EOS word's."""
  c = dataclasses.replace(te.PRESETS["tiny"], hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          projection_dim=8, max_position_embeddings=8, word_merge=4)
  tok = tokenizers.ByteTokenizer(40)
  ids = tok(["a red  star", "a red star", " a   red star ", "a redX starY", "a redish star", "a red star on",
              "a rediXX star", "a rediYY star"])
  slot, offset = te.word_slots(jnp.asarray(ids), 4)
  assert np.asarray(slot)[0, :13].tolist() == [0, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4]  # BOS a _ red __ star EOS
  params = te.TextEncoder(c).init(jax.random.key(0), jnp.asarray(ids))["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
  tokens, pooled = forward(c)(params, ids)
  tokens, pooled = np.asarray(tokens), np.asarray(pooled)
  for same in (1, 2):  # spacing is not content
    np.testing.assert_allclose(tokens[same], tokens[0], atol=1e-6)
    np.testing.assert_allclose(pooled[same], pooled[0], atol=1e-6)
  assert np.abs(pooled[3] - pooled[0]).max() > 1e-3  # "redX" is not "red" (4 bytes kept) ...
  np.testing.assert_allclose(tokens[4][:2], tokens[0][:2], atol=1e-6)  # ... causal: BOS, "a" unchanged
  assert np.abs(tokens[4][2] - tokens[0][2]).max() > 1e-3  # "redi" differs from "red"
  np.testing.assert_allclose(pooled[6], pooled[7], atol=1e-6)  # bytes past word_merge=4 are dropped
  # the pooled vector is read at the EOS word: appending a word moves it and changes it
  assert np.abs(pooled[5] - pooled[0]).max() > 1e-3
  np.testing.assert_allclose(tokens[5][:4], tokens[0][:4], atol=1e-6)
