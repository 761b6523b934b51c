"""A small CLIP-style BPE tokenizer trained on a corpus, saved as transformers tokenizer files.

The tiny world's CLIP models (the preference model, the parity goldens) are transformers CLIP
directories, so their tokenizer must be one transformers reads: a byte-level BPE (any UTF-8 text
round-trips; no unknown token), lower-cased like CLIP's, `<|startoftext|>` before and
`<|endoftext|>` after every text, padded with `<|endoftext|>` as CLIP's tokenizer pads. Trained with
the `tokenizers` library (a transformers dependency); nothing is downloaded.
"""
from __future__ import annotations

import os
from typing import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train(texts: Iterable[str], vocab_size: int, directory: str, max_length: int):
  """Trains the tokenizer on texts and writes it to directory (tokenizer.json, tokenizer_config.json,
  special_tokens_map.json); returns the transformers tokenizer."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(list(texts), trainer)
  bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
  tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                                 model_max_length=max_length)
  os.makedirs(directory, exist_ok=True)
  fast.save_pretrained(directory)
  return fast
