"""Datasets by name in the jobs (emojax.data.sources): EmoShapes' fixed TFDS splits, and the generator GRPO and LVLM
SFT jobs reading a prepared emoset_va (built here from a directory in EmoSet-118K's layout)."""
import numpy as np
import pytest

from conftest import generator_config, set_fields
from configs import sft_lvlm as sft_config
from emojax import trainer
from emojax.data import emoset, emoshapes, emoshapes_tfds, sources
from emojax.tasks.generator_grpo import GeneratorGRPO
from emojax.tasks.sft_lvlm import SFTLVLM
from test_emoset import make_emoset


@pytest.fixture(scope="module")
def emoset_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("emoset")
  manual = make_emoset(str(root / "EmoSet-118K"), per_split=(12, 4, 4), corrupt=0)
  for size in ("32", "64"):
    emoset.prepare(root / "data", manual, size)
  return str(root / "data")


def test_emoshapes_splits_are_fixed_disjoint_worlds(tmp_path):
  emoshapes_tfds.prepare(tmp_path, "tiny")
  test = sources.TfdsSource("emoshapes", str(tmp_path), "test", "tiny")
  assert len(test) == 16 and isinstance(test[0]["prompt"], str)
  want = {emoshapes.make_example(emoshapes_tfds.SPLIT_WORLDS["test"], i)["prompt"] for i in range(16)}
  assert {test[i]["prompt"] for i in range(16)} == want
  train = sources.TfdsSource("emoshapes", str(tmp_path), "train", "tiny")
  images = lambda split: {split[i]["image"].tobytes() for i in range(len(split))}
  assert len(images(train)) == 64 and not images(train) & images(test)  # prompts may repeat across worlds


def test_generator_grpo_trains_on_emoset_va_prompts(emoset_dir, tmp_path):
  config = generator_config("", **{"total_steps": 1, "mesh.num_devices": 1, "data.name": "emoset_va",
                                   "data.dir": emoset_dir, "data.config": "64", "data.target_mode": "data"})
  task = GeneratorGRPO(config)
  source = sources.open_source(config.data, "train", size=32)
  prompts = {source[i]["prompt"] for i in range(len(source))}
  raw = next(iter(task.make_loader(0, 1)))
  assert {str(p) for p in raw["prompt"]} <= prompts and all(p.startswith("a photo of") for p in prompts)
  result = trainer.run(config, str(tmp_path), task, progress=False)
  assert np.isfinite(result.metrics[0]["loss"])


def test_sft_lvlm_trains_and_evaluates_on_emoset_va(emoset_dir, tmp_path):
  config = sft_config.get_config("smoke")
  set_fields(config, **{"mesh.num_devices": 1, "total_steps": 2, "eval_every": 2, "checkpoint_every": 2,
                        "data.name": "emoset_va", "data.dir": emoset_dir, "data.noise_prob": 0.0})
  task = SFTLVLM(config)
  assert len(task.eval_split["image"]) == 4 and task.eval_split["image"].shape[1:] == (32, 32, 3)  # validation
  result = trainer.run(config, str(tmp_path), task, progress=False)
  assert np.isfinite(result.metrics[-1]["loss"]) and "eval/valence_mae" in result.metrics[-1]


def test_dataset_errors_are_one_line(emoset_dir, tmp_path):
  config = sft_config.get_config("smoke")
  set_fields(config, **{"data.name": "emoset_va", "data.dir": emoset_dir})  # noise_prob stays 0.5
  with pytest.raises(ValueError, match="relabel images by the EmoShapes colour model, which does not hold for emoset_va"):
    SFTLVLM(config).make_loader(0, 1)
  set_fields(config, **{"data.noise_prob": 0.0, "data.dir": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match="dataset emoset_va/32 is not prepared in data_dir"):
    SFTLVLM(config)


def test_evaluate_judges_emoset_va_test_and_emotic(emoset_dir, tmp_path):
  """python -m emojax.evaluate (LVLM mode) on prepared datasets: the same JSON line as on EmoShapes; EMOTIC (no
  Mikels category) leaves the category metrics out."""
  import json
  import subprocess
  import sys
  from conftest import ROOT, cli_env
  from emojax.data import emotic
  from emojax.io import assets
  from test_emotic import make_emotic
  emotic.prepare(tmp_path / "data", make_emotic(str(tmp_path / "EMOTIC")), "32")
  for name, data_dir, n in (("emoset_va", emoset_dir, 4), ("emotic", str(tmp_path / "data"), 1)):
    proc = subprocess.run([sys.executable, "-m", "emojax.evaluate", "--config=configs/evaluate.py",
                           f"--config.lvlm={assets.asset_dir('lvlm_tiny')}", f"--config.data.name={name}",
                           f"--config.data.dir={data_dir}", "--config.data.num_examples=8"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == n and out["data"] == f"{name}/32" and out["split"] == "test" and out["parse_rate"] == 1.0
    assert np.isfinite(out["valence_mae"]) and np.isfinite(out["arousal_mae"])
    assert (out["category_acc"] is None) == (name == "emotic")


def test_report_prints_counts_histograms_and_loader_speed(emoset_dir, tmp_path):
  import json
  import subprocess
  import sys
  from conftest import ROOT, cli_env
  from emojax.data import emotic, stats
  from test_emotic import make_emotic
  png = tmp_path / "va.png"
  proc = subprocess.run([sys.executable, "-m", "emojax.data.report", "--name=emoset_va", f"--data_dir={emoset_dir}",
                         "--builder_config=32", f"--out={png}"], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert {k: v["examples"] for k, v in out["splits"].items()} == {"train": 12, "validation": 4, "test": 4}
  assert sum(out["splits"]["train"]["categories"].values()) == 12
  assert all(v["loader_examples_per_s"] > 0 for v in out["splits"].values()) and png.stat().st_size > 1000
  emotic.prepare(tmp_path / "data", make_emotic(str(tmp_path / "EMOTIC")), "32")
  train = sources.TfdsSource("emotic", str(tmp_path / "data"), "train", "32")
  assert stats.category_counts("emotic", train) == {"Fear": 1, "Happiness": 1, "Peace": 1, "Pleasure": 1}


def test_emoset_va_loader_state_resumes_at_the_same_batch(emoset_dir):
  """The iterator state a checkpoint stores (grain's get_state) brings a fresh loader over the prepared dataset to
  the very next batch, as on the procedural world."""
  config = generator_config("", **{"data.name": "emoset_va", "data.dir": emoset_dir, "data.config": "32"})
  task = GeneratorGRPO(config)
  it = iter(task.make_loader(0, 1))
  next(it)
  state = it.get_state()
  want = next(it)
  again = iter(task.make_loader(0, 1))
  again.set_state(state)
  got = next(again)
  assert list(got["prompt"]) == list(want["prompt"]) and np.array_equal(got["valence"], want["valence"])


def test_lvlm_loader_resizes_a_dataset_prepared_at_another_side(emoset_dir):
  """data.config 64 with data.image_size 32: the grain loader (and the held-out split) resize to the model's side."""
  from emojax.data import pipeline
  config = sft_config.get_config("smoke")
  set_fields(config, **{"data.name": "emoset_va", "data.dir": emoset_dir, "data.config": "64",
                        "data.noise_prob": 0.0})
  batch = next(iter(pipeline.image_loader(config.data, batch_size=4, seed=0, shard_index=0, shard_count=1)))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert pipeline.held_out_split(config.data, 0, 4)["image"].shape == (4, 32, 32, 3)
