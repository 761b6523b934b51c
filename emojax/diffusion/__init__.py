"""Sigma schedules, SDE/ODE steps with log-prob, and scan rollouts."""
from emojax.diffusion.rollout import Trajectory, cfg_velocity, rollout
from emojax.diffusion.schedule import model_timesteps, sd3_sigmas
from emojax.diffusion.sde import cps_step, ode_step, sde_sigma_t, sde_step
