"""diffusers models sampled by difflab vs by diffusers' own schedulers (issue #18, "interop").

    python benchmarks/interop.py            # ~1 CPU-minute
    python benchmarks/interop.py --no-write # print only

A randomly initialised diffusers ``UNet2DModel`` (3 x 16 x 16, attention at 8 x 8) is saved as a
``DDPMPipeline`` folder and loaded with ``difflab.interop.from_diffusers``.  Each diffusers scheduler
runs its pipeline loop (``difflab.interop.sample_with_scheduler``); difflab's solver from
``solver_for`` runs on ``diffusers_grid`` (the scheduler's timestep spacing), from the same x_T, in
float32 and with the network and both samplers in float64.  Reported: max |x_difflab - x_diffusers|,
the samples' scale max |x_diffusers| and their ratio.  A random eps-network puts x0_hat in the
hundreds at t = T (alpha_T = 0.006), so the ratio is the fair figure; v-prediction keeps samples O(1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from difflab import sample, solvers
from difflab.interop import diffusers_grid, from_diffusers, sample_with_scheduler
from difflab.interop.diffusers import solver_for
from report import stamp, write_section

CASES = [  # (scheduler class, config overrides, what difflab runs)
    ("DDIMScheduler", {"steps_offset": 1}, "exact"),
    ("DDIMScheduler", {"timestep_spacing": "trailing"}, "exact"),
    ("DPMSolverMultistepScheduler", {}, "exact"),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"}, "exact"),
    ("UniPCMultistepScheduler", {}, "exact"),
    ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, "exact"),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, "other formula"),
    ("DEISMultistepScheduler", {}, "other formula"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--steps", type=int, nargs="+", default=[10])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import diffusers as D

    torch.set_num_threads(2)
    torch.manual_seed(0)
    unet = D.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for pred in ("epsilon", "v_prediction"):
            folder = Path(tmp) / pred
            D.DDPMPipeline(
                unet=unet, scheduler=D.DDPMScheduler(prediction_type=pred, clip_sample=False)
            ).save_pretrained(folder)
            for dtype in (torch.float32, torch.float64):
                den, sch = from_diffusers(folder, dtype=dtype)
                net = den.model  # the loaded module, in dtype
                x_T = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)
                for name, kw, kind in CASES:
                    for steps in args.steps:
                        sched = getattr(D, name).from_config(den.scheduler_config, **kw)
                        sc = dict(sched.config, _class_name=name)
                        ref = sample_with_scheduler(sched, lambda x, tau, net=net: net(x, tau).sample, x_T, steps)
                        solver, opts = solver_for(sc)
                        x = sample(
                            solvers.get(solver, **opts), den, sch, x_T, diffusers_grid(sch, sc, steps), dtype=dtype
                        )
                        diff, scale = float((x - ref).abs().max()), float(ref.abs().max())
                        rows.append(
                            (pred, str(dtype).removeprefix("torch."), name, kw, steps, solver, opts, kind, diff, scale)
                        )
                        print(rows[-1][:6], f"{diff:.3g} / {scale:.3g}", flush=True)
    md = report(rows)
    print(md)
    if not args.no_write:
        write_section(
            "interop",
            "## diffusers interop: difflab's solvers on diffusers models\n\n"
            + stamp("python benchmarks/interop.py")
            + "\n"
            + md,
        )


def report(rows: list) -> str:
    out = [
        "A randomly initialised diffusers `UNet2DModel` (3 x 16 x 16, attention at 8 x 8, 4 samples) saved as a "
        "`DDPMPipeline` folder and loaded by `difflab.interop.from_diffusers`; diffusers' scheduler runs its pipeline "
        "loop, difflab runs `solver_for(config)` on `diffusers_grid(config, steps)` from the same x_T. "
        "'max diff' = max |x_difflab - x_diffusers|, 'scale' = max |x_diffusers| (a random eps-network's x0_hat is "
        "in the hundreds at t = T, since alpha_T = 0.006; v-prediction keeps the samples O(1)). In float64 the network "
        "and both samplers run in float64, but diffusers computes its alphas_cumprod and sigmas in float32, so the "
        "float64 rows bottom out at float32 coefficient round-off, not at zero.",
        "",
        "| prediction | dtype | diffusers scheduler | steps | difflab solver | max diff | scale | diff / scale | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pred, dt, name, kw, steps, solver, opts, kind, diff, scale in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in kw.items())
        sopts = ", ".join(f"{k}={v!r}" for k, v in opts.items())
        note = "" if kind == "exact" else kind
        out.append(
            f"| {pred} | {dt} | {name}{f' ({cfg})' if cfg else ''} | {steps} | `{solver}`{f' ({sopts})' if sopts else ''} "
            f"| {diff:.2g} | {scale:.3g} | {diff / max(scale, 1.0):.2g} | {note} |"
        )
    exact = [r for r in rows if r[7] == "exact" and r[1] == "float32"]
    worst = max(r[8] / max(r[9], 1.0) for r in exact)
    out += [
        "",
        f"Worst relative difference of the matched pairs in float32: {worst:.2g} (the tests assert < 1e-4, "
        "`tests/test_interop.py`). 'other formula': difflab's `dpmpp_3m` integrates the quadratic interpolant "
        "exactly (third order; diffusers weights that term by half, second order, see the samplers section) and "
        "difflab's `deis` is tAB-DEIS (a polynomial in t; diffusers' DEIS extrapolates in log rho), so those pairs are "
        "the same method family, not the same numbers. diffusers 0.42's UniPC with `solver_type='bh1'` and "
        "`final_sigmas_type='zero'` (its default) returns NaN (B(h) = h = -inf on the last step to sigma = 0); "
        "difflab's last step to t = 0 is the final denoising step, so `unipc` with `variant='bh1'` has no such "
        "failure; the rows above use `sigma_min` for bh1.",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
