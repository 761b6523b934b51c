"""Writes tests/goldens/sd3_sigmas.json from diffusers (needs the `reference` extra).

  python tools/make_goldens_schedule.py
"""
import json
import pathlib

from diffusers import FlowMatchEulerDiscreteScheduler

CASES = [(10, 3.0), (28, 3.0), (40, 3.0), (4, 1.0), (1, 3.0), (50, 1.0)]
OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "goldens" / "sd3_sigmas.json"


def main():
  import diffusers
  cases = []
  for num_steps, shift in CASES:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    cases.append({
        "num_steps": num_steps,
        "shift": shift,
        # float32 -> Python float is exact, so the JSON round-trips bit for bit.
        "sigmas": [float(s) for s in scheduler.sigmas.numpy()],
        "timesteps": [float(t) for t in scheduler.timesteps.numpy()],
    })
  golden = {"source": f"diffusers {diffusers.__version__} FlowMatchEulerDiscreteScheduler", "cases": cases}
  OUT.parent.mkdir(parents=True, exist_ok=True)
  OUT.write_text(json.dumps(golden, indent=1) + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
