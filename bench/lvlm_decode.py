"""LVLM generation throughput (generated tokens/s) of emojax.lvlm.sampling, optionally vs transformers.

  python -m bench.lvlm_decode --config=tiny --torch
  python -m bench.lvlm_decode --config=small --torch
  python -m bench.lvlm_decode --config=tiny --batch=2 --num_samples=4 --prefill=once,tiled

Prompts are chat texts with one random image each (processor.prompt_batch, the short judge
question). Random weights: with --torch, transformers' Qwen2_5_VLForConditionalGeneration is built
with its own random init from the equivalent HF config and its state dict is imported with
load_hf_qwen_vl_params, so both run the same weights; otherwise jax-initialised weights. Greedy
decoding without an end-of-turn token, so every row generates exactly --new_tokens tokens on both
sides (HF: generate(do_sample=False, eos_token_id=None), sdpa attention, torch.inference_mode()).
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from emojax.io import tokenizers
from emojax.emotion import prompts
from emojax.lvlm import processor as proc_lib
from emojax.lvlm import sampling
from emojax.models import qwen_vl as qv

CONFIGS = {
  "tiny": (qv.PRESETS["tiny"], 32),
  # 4 layers of width 512 (8 heads x 64, 2 KV heads), vision depth 4 width 256; 64x64 image -> 64 tokens.
  "small": (qv.QwenVLConfig(
    vocab_size=tokenizers.TINY_CHAT_VOCAB_SIZE, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
    mrope_section=(8, 12, 12), tie_word_embeddings=True, image_token_id=tokenizers.IMAGE_PAD_ID,
    vision_start_token_id=tokenizers.VISION_START_ID, vision_end_token_id=tokenizers.VISION_END_ID,
    vision_config=qv.VisionConfig(
      depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, patch_size=4, spatial_merge_size=2,
      temporal_patch_size=2, tokens_per_second=2, window_size=32, out_hidden_size=512, fullatt_block_indexes=(1, 3))),
    64),
}


def hf_model(config: qv.QwenVLConfig):
  """transformers' model with its random init for `config`, and its weights as emojax params."""
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  vc = config.vision_config
  text = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
              num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
              num_key_value_heads=config.num_key_value_heads, hidden_act=config.hidden_act,
              max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
              rope_parameters=dict(rope_type="default", mrope_section=list(config.mrope_section),
                                   rope_theta=config.rope_theta),
              bos_token_id=None, eos_token_id=None, pad_token_id=0)
  vision = dict(depth=vc.depth, hidden_size=vc.hidden_size, hidden_act=vc.hidden_act,
                intermediate_size=vc.intermediate_size, num_heads=vc.num_heads, in_channels=vc.in_channels,
                patch_size=vc.patch_size, spatial_merge_size=vc.spatial_merge_size,
                temporal_patch_size=vc.temporal_patch_size, tokens_per_second=vc.tokens_per_second,
                window_size=vc.window_size, out_hidden_size=vc.out_hidden_size,
                fullatt_block_indexes=list(vc.fullatt_block_indexes))
  hf_config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=config.image_token_id,
                               vision_start_token_id=config.vision_start_token_id,
                               vision_end_token_id=config.vision_end_token_id, video_token_id=2,  # unused byte EOS
                               tie_word_embeddings=config.tie_word_embeddings)
  hf_config._attn_implementation = "sdpa"
  torch.manual_seed(0)
  model = Qwen2_5_VLForConditionalGeneration(hf_config).eval()
  state = {k: v.float().numpy() for k, v in model.state_dict().items()}
  return model, qv.load_hf_qwen_vl_params(state, config)


def torch_generate(model, batch, new_tokens):
  import torch
  ids = torch.from_numpy(batch["input_ids"]).long()
  kw = dict(input_ids=ids, attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
            pixel_values=torch.from_numpy(batch["pixel_values"]), image_grid_thw=torch.tensor(batch["image_grid_thw"]),
            mm_token_type_ids=(ids == model.config.image_token_id).int(), do_sample=False, max_new_tokens=new_tokens,
            eos_token_id=None, pad_token_id=0)

  def run():
    with torch.inference_mode():
      return model.generate(**kw)[:, ids.shape[1]:].numpy()
  return run


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
  p.add_argument("--batch", type=int, default=8, help="prompts B")
  p.add_argument("--num_samples", type=int, default=1, help="samples G per prompt (rows B*G)")
  p.add_argument("--new_tokens", type=int, default=32, help="generated tokens T per row")
  p.add_argument("--prefill", default="once", help="comma list of sampling prefill modes: once, tiled")
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the torch comparison is greedy)")
  p.add_argument("--torch", action="store_true", help="also time transformers' generate on the same weights")
  p.add_argument("--torch_threads", default=str(os.cpu_count()),
                 help="comma list of torch.set_num_threads values; the machine's core count gets unsuffixed keys, "
                      "others a _<n>thr suffix")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()

  config, size = CONFIGS[a.config]
  model = qv.QwenVL(config)
  proc = proc_lib.Processor.tiny(config)
  images = np.random.default_rng(a.seed).integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
  text = prompts.judge_prompt(short=True)
  length = len(proc.encode(prompts.chat_text(text), [proc.image(images[0])[1]]))
  batch = proc_lib.prompt_batch(proc, images, text, max_prompt_len=length)
  torch_model = None
  if a.torch:
    torch_model, params = hf_model(config)
  else:
    params = jax.jit(lambda k: model.init(k, *qv.dummy_inputs(config))["params"])(jax.random.key(a.seed))
  params = jax.tree.map(jnp.asarray, params)
  rows, t = a.batch * a.num_samples, a.new_tokens
  rec = {"bench": "lvlm_decode", "config": a.config, "batch": a.batch, "num_samples": a.num_samples, "new_tokens": t,
         "prompt_len": length, "image": size, "temperature": a.temperature, "params_m": common.num_params(params) / 1e6}

  grid = qv.static_grid(batch["image_grid_thw"])
  args = (params, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], jax.random.key(a.seed))
  calls, compile_s, out = {}, {}, {}
  for mode in a.prefill.split(","):
    for n_new in (t, 1):  # T tokens; 1 token = prefill + the first choice, no decode step
      kw = dict(grid=grid, max_new_tokens=n_new, num_samples=a.num_samples, temperature=a.temperature, top_p=1.0,
                eos_ids=(), pad_id=proc.pad_id, prefill=mode)
      compiled, secs = common.compile_jax(lambda *xs, kw=kw: sampling._sample(model, *xs, **kw), *args)
      name = mode if n_new == t else f"{mode}_prefill"
      calls[name], compile_s[name] = (lambda c=compiled: common.block(c(*args))), secs
    out[mode] = np.asarray(calls[mode]()["tokens"])
  timing = common.time_interleaved(calls, a.warmup, a.repeats)
  for mode in a.prefill.split(","):
    total, prefill = timing[mode]["median_s"], timing[f"{mode}_prefill"]["median_s"]
    rec[f"{mode}_tokens_per_s"] = rows * t / total  # end to end: vision + prefill + decode
    rec[f"{mode}_decode_tokens_per_s"] = rows * (t - 1) / max(total - prefill, 1e-9)
    rec[f"{mode}_prefill_s"] = prefill
    rec[f"{mode}_total_s"] = total
    rec[f"{mode}_compile_s"] = compile_s[mode]
  mode = a.prefill.split(",")[0]

  if torch_model is not None:
    import torch
    run, run1 = torch_generate(torch_model, batch, t), torch_generate(torch_model, batch, 1)
    if a.num_samples == 1 and a.temperature == 0:  # same weights, greedy: the tokens should agree
      rec["greedy_tokens_agree"] = float((run() == out[mode]).mean())
    for threads in [int(n) for n in a.torch_threads.split(",")]:
      torch.set_num_threads(threads)
      tt = common.time_interleaved({"all": run, "prefill": run1}, min(a.warmup, 1), a.repeats)
      total, prefill = tt["all"]["median_s"], tt["prefill"]["median_s"]
      tag = "" if threads == os.cpu_count() else f"_{threads}thr"
      rec[f"torch_tokens_per_s{tag}"] = rows * t / total
      rec[f"torch_decode_tokens_per_s{tag}"] = rows * (t - 1) / max(total - prefill, 1e-9)
      rec[f"torch_prefill_s{tag}"], rec[f"torch_total_s{tag}"] = prefill, total
      rec[f"ratio_vs_torch{tag}"] = rec[f"{mode}_tokens_per_s"] / rec[f"torch_tokens_per_s{tag}"]
      rec[f"decode_ratio_vs_torch{tag}"] = rec[f"{mode}_decode_tokens_per_s"] / rec[f"torch_decode_tokens_per_s{tag}"]
  rec.update(common.env_info())
  common.emit(rec)


if __name__ == "__main__":
  main()
