"""Token ids of the tiny world: the byte-level tokenizer (no vocabulary file, any UTF-8 text
round-trips) and the chat/vision marker ids its Qwen2.5-VL-architecture LVLM adds after the bytes."""
from __future__ import annotations

from typing import Sequence

import numpy as np

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_OFFSET = 3  # byte b has id b + 3
VOCAB_SIZE = 256 + _OFFSET

# The tiny LVLM's vocabulary: the byte ids, then Qwen2.5-VL's chat and vision markers.
IM_START_ID = VOCAB_SIZE  # 259
IM_END_ID = IM_START_ID + 1
VISION_START_ID = IM_START_ID + 2
VISION_END_ID = IM_START_ID + 3
IMAGE_PAD_ID = IM_START_ID + 4
TINY_CHAT_VOCAB_SIZE = IM_START_ID + 5  # 264


def byte_id(char: str) -> int:
  """The id of a one-byte character, e.g. byte_id(" ") == 35."""
  return ord(char.encode("utf-8")) + _OFFSET


class ByteTokenizer:
  """Encodes strings as [BOS, bytes..., EOS, PAD...] of a fixed length.

  Text longer than `max_length - 2` bytes is truncated and still ends in EOS, as CLIP's
  tokenizer does, so the pooled EOS state always exists.
  """

  vocab_size = VOCAB_SIZE
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

  def __init__(self, max_length: int):
    if max_length < 3:
      raise ValueError(f"ByteTokenizer max_length must be >= 3, got {max_length}")
    self.max_length = max_length

  def __call__(self, texts: Sequence[str | bytes]) -> np.ndarray:
    ids = np.full((len(texts), self.max_length), PAD_ID, np.int32)
    for row, text in enumerate(texts):
      data = text if isinstance(text, bytes) else str(text).encode("utf-8")
      body = np.frombuffer(data[: self.max_length - 2], np.uint8).astype(np.int32) + _OFFSET
      ids[row, 0] = BOS_ID
      ids[row, 1 : 1 + len(body)] = body
      ids[row, 1 + len(body)] = EOS_ID
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    out = bytearray()
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i >= _OFFSET:
        out.append(i - _OFFSET)
    return out.decode("utf-8", errors="replace")
