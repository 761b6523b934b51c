"""A small random-weight SD3.5 pipeline directory in the real layout, and diffusers' outputs on it, for
tests/test_sd3_pipeline.py.

  pip install -e .[reference]
  python tools/make_goldens_sd3_pipeline.py

Writes tests/goldens/sd3_pipeline/ with diffusers' StableDiffusion3Pipeline.save_pretrained
(model_index.json, transformer/ with SD3.5-Medium's dual-attention and RMS qk-norm, vae/ with 16
channels and no quant convs, text_encoder/ and text_encoder_2/ CLIPTextModelWithProjection,
text_encoder_3/ T5EncoderModel, tokenizer/, tokenizer_2/, tokenizer_3/ (tiny tokenizers trained here:
CLIP-style BPE, and a T5-style unigram that appends </s>), scheduler/ with shift 3), and
tests/goldens/sd3_pipeline.npz: encode_prompt's four outputs for two prompts with negatives, and the
images of a 2-step CFG generation from fixed latents (output_type "np", [0, 1]).
"""
import pathlib
import shutil

import numpy as np
import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline)
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast, T5Config,
                          T5EncoderModel)

from emojax.io import clip_tokenizer

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens"
CORPUS = ["a red circle in the center", "a dark blue square at the top left", "two bright yellow stars",
          "a calm green ring on a grey background", "a vivid orange triangle at the bottom right",
          "a photo of a cat", "an empty street at night", "a gloomy pale sky"]
PROMPTS = ["a red circle in the center", "two bright yellow stars on a gloomy pale sky"]
NEGATIVES = ["", "a dark blue square"]
CLIP_LEN, T5_LEN, SIZE, STEPS, CFG = 16, 24, 32, 2, 4.5


def t5_tokenizer(directory: pathlib.Path) -> PreTrainedTokenizerFast:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.Unigram())
  tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
  tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"],
                                                          unk_token="<unk>", show_progress=False))
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                 model_max_length=T5_LEN)
  fast.save_pretrained(directory)
  return fast


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
  with torch.no_grad():  # norms and biases off their defaults, so a swapped mapping shows
    for key, p in model.named_parameters():
      if "norm" in key and key.endswith("weight"):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
      elif key.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def clip_text(hidden: int, proj: int, act: str, vocab: int, eos: int, gen) -> CLIPTextModelWithProjection:
  cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                       num_attention_heads=2, max_position_embeddings=CLIP_LEN, projection_dim=proj, hidden_act=act,
                       bos_token_id=0, eos_token_id=eos, pad_token_id=eos)
  model = CLIPTextModelWithProjection(cfg).eval()
  randomise(model, gen)
  return model


def main():
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(1)
  tmp = OUT / "_tokenizers"
  tok_l = clip_tokenizer.train(CORPUS, 330, str(tmp / "l"), CLIP_LEN)
  tok_g = clip_tokenizer.train(CORPUS, 330, str(tmp / "g"), CLIP_LEN)
  tok_t5 = t5_tokenizer(tmp / "t5")
  eos = tok_l.eos_token_id  # not 2: transformers pools at the first EOS, which is the text's end
  enc_l = clip_text(16, 16, "quick_gelu", len(tok_l), eos, gen)  # CLIP-L/14 family
  enc_g = clip_text(24, 24, "gelu", len(tok_g), eos, gen)  # OpenCLIP bigG/14 family
  t5 = T5EncoderModel(T5Config(vocab_size=len(tok_t5), d_model=48, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                               relative_attention_num_buckets=8, relative_attention_max_distance=16,
                               feed_forward_proj="gated-gelu", is_encoder_decoder=False)).eval()
  randomise(t5, gen)
  transformer = SD3Transformer2DModel(
      sample_size=SIZE // 4, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
      num_attention_heads=2, joint_attention_dim=48, caption_projection_dim=16, pooled_projection_dim=40,
      pos_embed_max_size=8, qk_norm="rms_norm", dual_attention_layers=(0,)).eval()
  randomise(transformer, gen)
  vae = AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                      up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=4,
                      latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305,
                      shift_factor=0.0609, sample_size=SIZE).eval()
  randomise(vae, gen)
  pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                  vae=vae, text_encoder=enc_l, tokenizer=tok_l, text_encoder_2=enc_g,
                                  tokenizer_2=tok_g, text_encoder_3=t5, tokenizer_3=tok_t5)
  directory = OUT / "sd3_pipeline"
  shutil.rmtree(directory, ignore_errors=True)
  pipe.save_pretrained(directory, safe_serialization=True)
  shutil.rmtree(tmp)

  latents = torch.randn((len(PROMPTS), 16, SIZE // 4, SIZE // 4), generator=gen)
  with torch.no_grad():
    pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, negative_prompt=NEGATIVES,
                                                  negative_prompt_2=NEGATIVES, negative_prompt_3=NEGATIVES,
                                                  do_classifier_free_guidance=True, max_sequence_length=T5_LEN)
    images = pipe(PROMPTS, negative_prompt=NEGATIVES, latents=latents, num_inference_steps=STEPS,
                  guidance_scale=CFG, height=SIZE, width=SIZE, max_sequence_length=T5_LEN, output_type="np").images
  path = OUT / "sd3_pipeline.npz"
  np.savez_compressed(path, prompts=np.array(PROMPTS), negatives=np.array(NEGATIVES), latents=latents.numpy(),
                      prompt_embeds=pe.numpy(), negative_prompt_embeds=npe.numpy(), pooled=pooled.numpy(),
                      negative_pooled=npooled.numpy(), images=images, num_steps=STEPS, guidance_scale=CFG,
                      t5_len=T5_LEN)
  print(f"{path}: embeds {tuple(pe.shape)}, pooled {tuple(pooled.shape)}, images {images.shape} "
        f"in [{images.min():.3f}, {images.max():.3f}], std {images.std():.3f}")


if __name__ == "__main__":
  main()
