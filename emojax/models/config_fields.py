"""One rule for reading model configs from dicts (config.json files, saved assets)."""
from __future__ import annotations

import dataclasses
from typing import Any


def known_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
  """d's entries that are fields of dataclass `cls`; keys starting with "_" (diffusers'
  `_class_name`, `_diffusers_version`) are ignored, any other unknown key is a one-line error."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(k for k in d if k not in names and not k.startswith("_"))
  if unknown:
    raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
  return {k: v for k, v in d.items() if k in names}
