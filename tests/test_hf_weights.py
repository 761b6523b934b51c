"""The one state-dict -> params path every model's weight import goes through (emojax.io.hf_weights)."""
import jax
import numpy as np
import pytest

from emojax.io import hf_weights

SHAPES = {("dense", "kernel"): jax.ShapeDtypeStruct((3, 5), np.float32),
          ("conv", "kernel"): jax.ShapeDtypeStruct((2, 2, 3, 4), np.float32),
          ("norm", "scale"): jax.ShapeDtypeStruct((5,), np.float32)}
KEYS = {"dense.weight": ("dense", "kernel"), "conv.weight": ("conv", "kernel"), "norm.weight": ("norm", "scale")}


def _state(rng):
  return {"dense.weight": rng.normal(size=(5, 3)).astype(np.float32),  # torch Linear (out, in)
          "conv.weight": rng.normal(size=(4, 3, 2, 2)).astype(np.float32),  # Conv2d (O, I, kh, kw)
          "norm.weight": rng.normal(size=(5,)).astype(np.float32)}


def test_layouts_round_trip_and_cast():
  state = _state(np.random.default_rng(0))
  params = hf_weights.to_params(state, SHAPES, KEYS, what="toy", dtype=np.float16)
  np.testing.assert_array_equal(params[("dense", "kernel")], state["dense.weight"].T.astype(np.float16))
  assert params[("conv", "kernel")][1, 0, 2, 3] == state["conv.weight"][3, 2, 1, 0].astype(np.float16)
  assert all(w.dtype == np.float16 for w in params.values())
  nested = {"dense": {"kernel": params[("dense", "kernel")]}, "conv": {"kernel": params[("conv", "kernel")]},
            "norm": {"scale": params[("norm", "scale")]}}
  back = hf_weights.from_params(nested, lambda p: {v: k for k, v in KEYS.items()}[p])
  assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in state.items()}
  np.testing.assert_array_equal(back["conv.weight"], state["conv.weight"].astype(np.float16))


def test_mismatches_name_the_keys():
  state = _state(np.random.default_rng(0))
  extra = dict(state, **{"head.weight": np.zeros(2), "logit_bias": np.zeros(1)})
  with pytest.raises(ValueError, match=r"toy state dict does not match its config: missing \[\], "
                                       r"unexpected \[head.weight\]"):
    hf_weights.to_params(extra, SHAPES, KEYS, what="toy", ignored=("logit_bias",))
  with pytest.raises(ValueError, match=r"missing \[norm.weight\]"):
    hf_weights.to_params({k: v for k, v in state.items() if k != "norm.weight"}, SHAPES, KEYS, what="toy")
  # a parameter no key reaches is missing too (loaders that build keys from the file, like the VAE's)
  with pytest.raises(ValueError, match=r"missing \[norm.scale\]"):
    hf_weights.to_params(state, SHAPES, {k: p for k, p in KEYS.items() if k != "norm.weight"}, what="toy",
                         ignored=("norm.weight",))
  # shapes are reported in the file's (torch) layout
  with pytest.raises(ValueError, match=r"conv.weight has shape \(4, 3, 2, 3\) in the weights but the config "
                                       r"implies \(4, 3, 2, 2\)"):
    hf_weights.to_params(dict(state, **{"conv.weight": np.zeros((4, 3, 2, 3))}), SHAPES, KEYS, what="toy")
  with pytest.raises(ValueError, match=r"dense.weight has shape \(3, 5\) in the weights but the config "
                                       r"implies \(5, 3\)"):
    hf_weights.to_params(dict(state, **{"dense.weight": np.zeros((3, 5))}), SHAPES, KEYS, what="toy")


def test_key_list_is_short():
  assert hf_weights.key_list(["a", "b"]) == "a, b"
  assert hf_weights.key_list([str(i) for i in range(9)], n=2) == "0, 1, ... (9 total)"
