import json
import pathlib

import numpy as np
import pytest

from emojax.diffusion import model_timesteps, sd3_sigmas

GOLDEN = json.loads((pathlib.Path(__file__).parent / "goldens" / "sd3_sigmas.json").read_text())


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"N{c['num_steps']}-s{c['shift']}")
def test_matches_diffusers(case):
  sigmas = sd3_sigmas(case["num_steps"], case["shift"])
  assert sigmas.dtype == np.float32 and sigmas.shape == (case["num_steps"] + 1,)
  np.testing.assert_allclose(sigmas, case["sigmas"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(model_timesteps(sigmas), case["timesteps"], rtol=0, atol=1e-3)


def test_shift_applied_twice_at_low_end():
  sigmas = sd3_sigmas(10, 3.0)
  assert sigmas[0] == 1 and sigmas[-1] == 0
  np.testing.assert_allclose(sigmas[-2], 0.00893, atol=5e-6)
  assert np.all(np.diff(sigmas) < 0)


def test_rejects_zero_steps():
  with pytest.raises(ValueError):
    sd3_sigmas(0)
