"""Imports point down. Every emojax module is a core module, a job (emojax.tasks), a command line (an
`app.run` / `cli.run` entry point) or a config. Core packages import only the packages LAYERS lists under them,
a table with no cycle; no core module imports a job or a command line; a job imports no other job; a command
line imports no other command line but the shared helpers (emojax.cli); configs (emojax.configs) import only
ml_collections and the config helpers. Read from the source (every import statement, also inside functions)."""
import ast
import os

import pytest

from conftest import ROOT

CLI_HELPERS = "emojax.cli"
CLIS = (CLI_HELPERS, "emojax.train", "emojax.evaluate", "emojax.export", "emojax.generate", "emojax.plan",
        "emojax.ablate",
        "emojax.data.report")  # kept beside its package (`python -m emojax.data.report`); its code is in data.stats
JOBS = "emojax.tasks"
CONFIGS = "emojax.configs"  # `configs/` at the root is a link to it
LAYERS = {  # core package -> the only other emojax packages (or modules) it may import
    "emojax.config_utils": (),
    "emojax.emotion": (),
    "emojax.diffusion": (),
    "emojax.io": (),
    "emojax.optim": (),
    "emojax.metric_log": (),
    "emojax.checkpoint": (),
    "emojax.parallel": ("emojax.config_utils",),
    "emojax.models": ("emojax.io", "emojax.emotion.space", "emojax.parallel"),
    "emojax.data": ("emojax.emotion", "emojax.io"),
    "emojax.rl": ("emojax.diffusion", "emojax.optim", "emojax.parallel"),
    "emojax.lvlm": ("emojax.emotion", "emojax.io", "emojax.models", "emojax.parallel"),
    "emojax.trainer": ("emojax.checkpoint", "emojax.config_utils", "emojax.metric_log", "emojax.optim",
                       "emojax.parallel"),
    "emojax.rewards": ("emojax.config_utils", "emojax.data", "emojax.emotion", "emojax.io", "emojax.lvlm",
                       "emojax.models", "emojax.optim", "emojax.parallel"),
    "emojax.pipelines": ("emojax.data", "emojax.diffusion", "emojax.emotion", "emojax.io", "emojax.lvlm",
                         "emojax.models"),
    "emojax.planning": ("emojax.io", "emojax.models", "emojax.rewards"),
    "emojax.evaluation": ("emojax.data", "emojax.emotion", "emojax.io", "emojax.parallel", "emojax.pipelines",
                          "emojax.rewards"),
}
CORE = tuple(LAYERS)


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


def _all_modules():
  """{dotted name: path} of every module in emojax/."""
  out = {}
  for root, _, files in os.walk(os.path.join(ROOT, "emojax")):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, name[:-3]), ROOT)
        out[rel.replace(os.sep, ".").removesuffix(".__init__")] = os.path.join(root, name)
  return out


MODULES = _all_modules()


def _under(name, prefixes):
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules(prefix):
  return {m: p for m, p in MODULES.items() if _under(m, (prefix,))}


def _emojax(path):
  """The emojax modules and packages a file imports (a "from x import name" counts as x.name too)."""
  return {i for i in _imports(path) if _under(i, ("emojax",)) and i != "emojax"}


def _package(name):
  return next((p for p in (*CLIS, JOBS, CONFIGS, *CORE) if _under(name, (p,))), None)


def _has_entry_point(path):
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run"
        and isinstance(node.func.value, ast.Name) and node.func.value.id in ("app", "cli")):
      return True
  return False


def test_every_module_is_core_a_job_a_command_line_or_a_config():
  unknown = sorted(m for m in MODULES if m != "emojax" and _package(m) is None)
  assert not unknown, f"{unknown}: add them to LAYERS (with what they may import), emojax.tasks or CLIS"


def test_clis_are_exactly_the_entry_points():
  entry_points = {m for m, p in MODULES.items() if _has_entry_point(p)}
  assert entry_points == set(CLIS), f"entry points {sorted(entry_points)}, CLIS {sorted(CLIS)}"


def test_layers_have_no_cycle():
  def below(pkg, seen=()):
    assert pkg not in seen, f"import cycle: {' -> '.join((*seen, pkg))}"
    for dep in LAYERS[pkg]:
      below(_package(dep), (*seen, pkg))
  for pkg in CORE:
    below(pkg)


@pytest.mark.parametrize("package", CORE)
def test_core_imports_only_the_packages_below_it(package):
  for module, path in _modules(package).items():
    if module in CLIS:  # a command line beside its package: test_clis_import_no_other_cli
      continue
    bad = sorted(i for i in _emojax(path) if not _under(i, (package, *LAYERS[package])))
    assert not bad, f"{module} imports {bad}; {package} may import {LAYERS[package] or 'no other emojax package'}"


@pytest.mark.parametrize("package", CORE)
def test_core_never_imports_a_job_or_a_command_line(package):
  for module, path in _modules(package).items():
    if module in CLIS:
      continue
    bad = sorted(i for i in _emojax(path) if _under(i, (JOBS, *CLIS)))
    assert not bad, f"{module} imports {bad}"


def test_a_job_imports_no_other_job_and_no_command_line():
  for module, path in _modules(JOBS).items():
    if module == JOBS:  # the package's make_task builds every job
      continue
    bad = sorted(i for i in _emojax(path) if _under(i, CLIS) or (_under(i, (JOBS,)) and not _under(i, (module,))
                                                                and i != JOBS))
    assert not bad, f"{module} imports {bad}: move what they share down into a core package"


@pytest.mark.parametrize("module", CLIS)
def test_clis_import_no_other_cli(module):
  others = tuple(c for c in CLIS if c not in (module, CLI_HELPERS))
  bad = sorted(i for i in _emojax(MODULES[module]) if _under(i, others))
  assert not bad, f"{module} imports {bad}"


def test_configs_import_only_ml_collections_and_the_config_helpers():
  for module, path in _modules(CONFIGS).items():
    bad = sorted(i for i in _imports(path) if not _under(i, ("ml_collections", "emojax.config_utils")) and i != "emojax")
    assert not bad, f"{module} imports {bad}"
