"""docs/configs.md is what tools/make_config_docs.py writes from the configs' declared fields."""
import importlib.util
import os

import pytest

from conftest import ROOT


def _tool():
  spec = importlib.util.spec_from_file_location("make_config_docs", os.path.join(ROOT, "tools", "make_config_docs.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_configs_md_is_current():
  tool = _tool()
  with open(tool.OUT) as f:
    current = f.read()
  if current != tool.render():
    pytest.fail(f"docs/configs.md is stale (a config's fields or presets changed): run `{tool.COMMAND}`",
                pytrace=False)


def test_every_field_and_every_preset_is_documented():
  tool = _tool()
  text = tool.render()
  for rel_path in tool.config_files():
    module = tool.load(os.path.join(ROOT, rel_path))
    assert f"## {rel_path}\n" in text
    assert all(f"| `{path}` |" in text for path, _ in module.FIELDS.items())
    assert all(f"### {rel_path}:{name}\n" in text for name in list(getattr(module, "PRESETS", {}))[1:])
