"""difflab: diffusion models in one small, verified core.  See README.md and docs/architecture.md."""

from difflab import parameterization, schedules, solvers, timesteps, toy
from difflab.denoiser import Denoiser
from difflab.solvers import sample

__version__ = "0.1.0"

__all__ = ["Denoiser", "parameterization", "sample", "schedules", "solvers", "timesteps", "toy"]
