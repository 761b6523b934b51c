"""SD3 rectified-flow sigma schedule, bit-compatible with diffusers.

Reproduces `FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(N)` (default
`num_train_timesteps=1000`, no dynamic shifting), including its dtype path: the training
table and its end points are float32, the inference schedule is built in float64 and cast
to float32. The shift is therefore applied twice at the low end (docs/design.md).
"""
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def _shift(sigmas, shift):
  return shift * sigmas / (1 + (shift - 1) * sigmas)


def sd3_sigmas(num_steps: int, shift: float = 3.0) -> np.ndarray:
  """Returns the (num_steps + 1,) float32 sigmas, decreasing from 1 and ending in 0."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  n = NUM_TRAIN_TIMESTEPS
  # The scheduler's constructor: float32 training sigmas, shifted; only the end points
  # survive into set_timesteps, as Python floats.
  train = np.linspace(1, n, n, dtype=np.float32)[::-1] / np.float32(n)
  train = _shift(train, np.float32(shift))
  sigma_max, sigma_min = float(train[0]), float(train[-1])
  t = np.linspace(sigma_max * n, sigma_min * n, num_steps) / n
  sigmas = _shift(t, float(shift)).astype(np.float32)
  return np.append(sigmas, np.float32(0))


def model_timesteps(sigmas) -> np.ndarray:
  """The transformer's timestep input for each step: sigmas[:-1] * 1000, float32."""
  sigmas = np.asarray(sigmas, np.float32)
  return sigmas[:-1] * np.float32(NUM_TRAIN_TIMESTEPS)
