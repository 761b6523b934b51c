"""python -m emojax.export --workdir=DIR [--step=N] [--outdir=DIR/export]

Writes a training workdir's checkpoint (the latest complete one, or step N) as the job's export,
the same directory a run writes when it reaches total_steps: for generator jobs a generator
directory (config.json + params.safetensors, with the MMDiT in the diffusers layout under
transformer/) that --config.model.pretrained reads; for LVLM jobs an LVLM export that
--config.lvlm / --config.model.pretrained read. The job is rebuilt from the config stored in the
checkpoint. An existing export is replaced; a non-empty directory that is not an export is refused.
"""
from __future__ import annotations

from absl import app, flags

from emojax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest complete one).")
_OUTDIR = flags.DEFINE_string("outdir", None, "Where to write the export (default: WORKDIR/export).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir=DIR (a training workdir) is required")
  import os
  import ml_collections
  from emojax import checkpoint, trainer
  from emojax.tasks import make_task
  if not os.path.isdir(os.path.join(_WORKDIR.value, "checkpoints")):
    raise FileNotFoundError(f"{_WORKDIR.value} has no checkpoints/: pass the --workdir of a training run")
  cli.use_compilation_cache()
  ckpt = checkpoint.Checkpointer(_WORKDIR.value)
  step = ckpt.latest_step() if _STEP.value is None else _STEP.value
  saved = ckpt.saved_config(step) if step is not None else None
  ckpt.close()
  if not saved:
    raise FileNotFoundError(f"no complete checkpoint{'' if step is None else f' {step}'} with a saved config in "
                            f"{_WORKDIR.value}/checkpoints")
  config = ml_collections.ConfigDict(saved)
  out = trainer.export_checkpoint(config, _WORKDIR.value, make_task(config), step, _OUTDIR.value)
  print(out, flush=True)


if __name__ == "__main__":
  cli.run(main, "emojax.export")
