"""Bridges to other libraries' formats.  This package is the only place in difflab that imports
them; each bridge imports its library lazily, so ``import difflab.interop`` needs nothing extra.

- :func:`from_diffusers`: a diffusers model directory saved on disk (``UNet2DModel``,
  ``UNet2DConditionModel``, ``DiTTransformer2DModel`` with its scheduler config, or a
  ``DDPMPipeline``-style folder) as a difflab denoiser and schedule (``pip install difflab[interop]``).
"""

from difflab.interop.diffusers import (
    SUPPORTED_MODELS,
    DiffusersDenoiser,
    diffusers_grid,
    from_diffusers,
    sample_with_scheduler,
    schedule_from_config,
)

__all__ = [
    "SUPPORTED_MODELS",
    "DiffusersDenoiser",
    "diffusers_grid",
    "from_diffusers",
    "sample_with_scheduler",
    "schedule_from_config",
]
