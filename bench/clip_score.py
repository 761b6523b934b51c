"""CLIP image + text scoring throughput: emojax's Flax CLIP vs transformers' CLIPModel, same weights.

  python -m bench.clip_score --config=tiny --batch=64
  python -m bench.clip_score --config=b32 --batch=16 --torch_threads=2,1

One scoring call = embed B preprocessed images and B tokenised prompts, normalise, cosine per pair
(what `ClipScorer.pickscore` computes after preprocessing). emojax: one jitted program, params as
arguments (`compile_s` = trace + lower + compile). transformers: `CLIPModel.get_image_features` +
`get_text_features` under `torch.inference_mode()`, the emojax weights exported with
`clip.to_hf_state_dict`; `max_abs_diff` compares the two cosines. `images_per_s` = B / median seconds.
Configs: `tiny` (emojax/assets/pickscore_tiny's shape: width 128, 32 px, patch 4, 3 + 4 layers) and `b32`
(OpenAI ViT-B/32: width 768/512, 224 px, patch 32, 12 + 12 layers). Random weights; prompts of 77 ids.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from emojax.models import clip as clip_lib
from emojax.models import text_encoder as te

CONFIGS = {
    "tiny": clip_lib.CLIPConfig(
        text=te.TextEncoderConfig(vocab_size=512, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                                  num_attention_heads=4, max_position_embeddings=64, hidden_act="gelu",
                                  projection_dim=128, eos_token_id=1, pooling="first_eos"),
        vision=clip_lib.VisionConfig(hidden_size=128, intermediate_size=512, projection_dim=128, num_hidden_layers=4,
                                     num_attention_heads=4, image_size=32, patch_size=4, hidden_act="gelu"),
        projection_dim=128),
    "b32": clip_lib.CLIPConfig(
        text=te.TextEncoderConfig(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                  num_attention_heads=8, max_position_embeddings=77, projection_dim=512,
                                  eos_token_id=2, pooling="argmax_ids"),
        vision=clip_lib.VisionConfig(), projection_dim=512),
}


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--torch_threads", default="2", help="comma-separated torch thread counts")
  a = p.parse_args()
  cfg = CONFIGS[a.config]
  model = clip_lib.CLIP(cfg)
  params = jax.jit(lambda k: clip_lib.init_params(cfg, k))(jax.random.key(0))
  rng = np.random.default_rng(0)
  v, t = cfg.vision, cfg.text
  pixels = rng.standard_normal((a.batch, v.image_size, v.image_size, 3)).astype(np.float32)
  ids = rng.integers(3, t.vocab_size - 1, (a.batch, t.max_position_embeddings)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 0, t.vocab_size - 1 if t.pooling == "argmax_ids" else t.eos_token_id
  mask = np.ones_like(ids)

  def score(p, px, i, m):
    img = model.apply({"params": p}, px, method=clip_lib.CLIP.image_embeds)
    txt = model.apply({"params": p}, i, m, method=clip_lib.CLIP.text_embeds)
    return jnp.sum(img * txt, -1)

  fn, compile_s = common.compile_jax(score, params, pixels, ids, mask)
  ours = np.asarray(fn(params, pixels, ids, mask))
  timing = common.time_jax(fn, params, pixels, ids, mask, warmup=a.warmup, repeats=a.repeats)
  rec = {"bench": "clip_score", "config": a.config, "batch": a.batch, "params_m": common.num_params(params) / 1e6,
         "compile_s": compile_s, "images_per_s": a.batch / timing["median_s"], "step_s": timing["median_s"]}

  import torch
  from transformers import CLIPConfig, CLIPModel
  hf = CLIPModel(CLIPConfig(**clip_lib.hf_config_dict(cfg))).eval()
  hf.load_state_dict({k: torch.from_numpy(np.array(w)) for k, w in clip_lib.to_hf_state_dict(jax.device_get(params)).items()})
  tpx, tids, tmask = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(ids).long(), torch.from_numpy(mask)

  def torch_score():
    with torch.inference_mode():
      img = hf.get_image_features(pixel_values=tpx)
      txt = hf.get_text_features(input_ids=tids, attention_mask=tmask)
      img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
      return ((img / img.norm(dim=-1, keepdim=True)) * (txt / txt.norm(dim=-1, keepdim=True))).sum(-1).numpy()

  for n in (int(x) for x in a.torch_threads.split(",")):
    torch.set_num_threads(n)
    theirs = torch_score()
    tt = common.time_calls(torch_score, a.warmup, a.repeats)
    suffix = "" if n == 2 else f"_{n}thr"
    rec[f"torch_images_per_s{suffix}"] = a.batch / tt["median_s"]
    rec[f"ratio_vs_torch{suffix}"] = rec["images_per_s"] / rec[f"torch_images_per_s{suffix}"]
  rec["max_abs_diff"] = float(np.abs(ours - theirs).max())
  rec.update(common.env_info())
  common.emit(rec)


if __name__ == "__main__":
  main()
