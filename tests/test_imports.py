"""Imports point down: no core module imports a job or a command line, rl/ knows only diffusion and GRPO
math (and the batch's sharding), models/ no training or data code, diffusion/ no network, configs only
ml_collections and the config helpers. Read from the source (every import statement, also those inside functions)."""
import ast
import os

import pytest

from conftest import ROOT

CLIS = ("emojax.train", "emojax.evaluate", "emojax.export", "emojax.cli", "emojax.plan",
        "emojax.data.report")  # a command line kept beside its package (`python -m emojax.data.report`)


def _imports(path):
  tree = ast.parse(open(path).read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out |= {f"{node.module}.{a.name}" for a in node.names}  # "from emojax import trainer"
  return out


def _modules(package):
  base = os.path.join(ROOT, *package.split("."))
  if os.path.isfile(base + ".py"):
    return {package: base + ".py"}
  out = {}
  for name in sorted(os.listdir(base)):
    if name.endswith(".py"):
      out[f"{package}.{name[:-3]}".removesuffix(".__init__")] = os.path.join(base, name)
  return out


def _emojax(imports):
  return {i for i in imports if i == "emojax" or i.startswith("emojax.")}


def _under(name, prefixes):
  return any(name == p or name.startswith(p + ".") for p in prefixes)


CORE = ("emojax.models", "emojax.diffusion", "emojax.rl", "emojax.rewards", "emojax.emotion", "emojax.data",
        "emojax.lvlm", "emojax.io", "emojax.evaluation", "emojax.pipelines", "emojax.parallel", "emojax.checkpoint",
        "emojax.trainer", "emojax.optim", "emojax.metrics", "emojax.config_utils")
ALLOWED = {  # package -> the only emojax packages it may import (besides itself)
    "emojax.rl": ("emojax.diffusion", "emojax.optim", "emojax.parallel"),
    "emojax.diffusion": (),
    "emojax.models": ("emojax.io", "emojax.emotion.space"),
    "emojax.config_utils": (),
    "emojax.emotion": (),
}


@pytest.mark.parametrize("package", CORE)
def test_core_never_imports_a_job_or_a_command_line(package):
  for module, path in _modules(package).items():
    if module in CLIS:  # a command line may use the CLI helpers; no core module may import it (checked here too)
      continue
    bad = sorted(i for i in _emojax(_imports(path)) if _under(i, ("emojax.tasks", *CLIS)))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_they_build_on(package):
  for module, path in _modules(package).items():
    bad = sorted(i for i in _emojax(_imports(path)) if not _under(i, (package, *ALLOWED[package])) and i != "emojax")
    assert not bad, f"{module} imports {bad}; allowed: {ALLOWED[package]}"


def test_configs_import_only_ml_collections_and_the_config_helpers():
  for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    if name.endswith(".py"):
      imports = _imports(os.path.join(ROOT, "configs", name))
      bad = sorted(i for i in imports if not _under(i, ("ml_collections", "emojax.config_utils")) and i != "emojax")
      assert not bad, f"configs/{name} imports {bad}"
