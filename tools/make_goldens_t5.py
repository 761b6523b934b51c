"""Golden outputs of transformers' T5EncoderModel for tests/test_t5.py.

  pip install -e .[reference]
  python tools/make_goldens_t5.py

Writes tests/goldens/t5_<name>.npz per small random config: the config.json transformers' save_pretrained
writes, the float32 state dict (weights/<key>; the tied encoder.embed_tokens.weight only as shared.weight),
input_ids (2, 20), attention_mask (row 1: its last 6 tokens padding) and last_hidden_state. 20 tokens with
max_distance 16 put relative positions past the last log bucket. Also stored: the bucket table of the (20, 20)
query/key grid for the config's buckets, and bucket_default, the buckets of relative positions -512..512 under
transformers' defaults (32 buckets, max distance 128, what SD3's T5-XXL uses), both from
T5Attention._relative_position_bucket. The "gated" golden also has last_hidden_state_silu: the same weights run
with feed_forward_proj "gated-silu".
"""
import pathlib

import numpy as np
import torch
from transformers import T5Config, T5EncoderModel
from transformers.models.t5.modeling_t5 import T5Attention

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens"
SMALL = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
             relative_attention_max_distance=16, feed_forward_proj="gated-gelu")
CONFIGS = {
  "gated": SMALL,  # T5 v1.1 / SD3
  "relu": dict(SMALL, feed_forward_proj="relu", num_layers=3, d_kv=6),  # original T5; inner dim 24 != d_model
}
DEFAULT_RANGE = np.arange(-512, 513)


def buckets(rel, num_buckets, max_distance) -> np.ndarray:
  return T5Attention._relative_position_bucket(torch.as_tensor(rel), bidirectional=True, num_buckets=num_buckets,
                                               max_distance=max_distance).numpy().astype(np.int8)


def std(key: str, p: torch.Tensor) -> float:
  # Large enough that the FFN's pre-activations reach |x| ~ 3 (where tanh-gelu, erf-gelu and silu differ) and the
  # attention is far from uniform (the position bias and the mask move the output); 0.1 * randn everywhere
  # leaves gelu_tanh vs gelu_erf indistinguishable at 1e-7.
  if key.endswith("layer_norm.weight"):
    return 0.3
  if key in ("shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"):
    return 1.0
  return 1.5 / p.shape[1] ** 0.5  # Linear (out, in): gain 1.5 over 1/sqrt(fan_in)


def run(cfg: dict, state: dict, ids, mask) -> np.ndarray:
  model = T5EncoderModel(T5Config(**cfg)).eval()
  model.load_state_dict(state)
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()


def golden(name: str, cfg: dict) -> None:
  gen = torch.Generator().manual_seed(0)
  model = T5EncoderModel(T5Config(**cfg)).eval()
  with torch.no_grad():
    for key, p in model.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * std(key, p))
      if key.endswith("layer_norm.weight"):  # around 1 but not 1: unit scales would hide a swapped mapping
        p.add_(1.0)
  ids = torch.randint(0, cfg["vocab_size"], (2, 20), generator=gen)
  mask = torch.ones_like(ids)
  mask[1, -6:] = 0
  with torch.no_grad():
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
  state = model.state_dict()
  extra = {}
  if cfg["feed_forward_proj"] == "gated-gelu":
    extra["last_hidden_state_silu"] = run(dict(cfg, feed_forward_proj="gated-silu"), state, ids, mask)
  pos = np.arange(20)
  # encoder.embed_tokens.weight is tied to shared.weight (the same tensor): stored once, as save_pretrained does
  weights = {f"weights/{k}": v.float().numpy() for k, v in state.items() if k != "encoder.embed_tokens.weight"}
  path = OUT / f"t5_{name}.npz"
  np.savez_compressed(path, config=model.config.to_json_string(), input_ids=ids.numpy().astype(np.int32),
                      attention_mask=mask.numpy().astype(np.int32), last_hidden_state=out,
                      relative_position_bucket=buckets(pos[None, :] - pos[:, None],
                                                       cfg["relative_attention_num_buckets"],
                                                       cfg["relative_attention_max_distance"]),
                      bucket_default=buckets(DEFAULT_RANGE, 32, 128), **extra, **weights)
  print(f"{path}: {path.stat().st_size / 1e3:.0f} kB, attn {model.config._attn_implementation}, "
        f"|last_hidden_state| max {np.abs(out).max():.3f}, weights {sorted(state)[:3]}...")


if __name__ == "__main__":
  for name, cfg in CONFIGS.items():
    golden(name, cfg)
