"""Inpainting against the exact conditional of a Gaussian mixture: how far replacement, RePaint and
SMC inpainting land from p(x_1 | x_0) (closed form: GaussianMixture.conditional).

    flock /tmp/difflab-cpu.lock python benchmarks/inpainting_oracle.py

Data: two equal modes at (-1, -1) and (1, 1), std 0.5; known x_0 = 0.3, which makes the mode
x_1 ~ +1 eleven times likelier than x_1 ~ -1 (weight 0.917).  The exact posterior-mean denoiser
on the continuous VP schedule, a log-SNR grid of 50 steps to t = 0, the ancestral (ddpm) solver.
16 independent runs per method (SMC: 16 images x 250 particles; the others 16 x 250 samples);
the standard error is the spread of the 16 run means.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from difflab import schedules, timesteps, toy
from difflab.editing import inpaint, inpaint_smc

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    torch.set_num_threads(1)
    gm = toy.GaussianMixture([0.5, 0.5], [[-1.0, -1.0], [1.0, 1.0]], stds=0.5)
    xk = 0.3
    cond = gm.conditional([0], [xk])
    sch = schedules.VP()
    ts = timesteps.log_snr_uniform(sch, 50, t_end=0.0)
    den = gm.denoiser(sch)
    B, K = 16, 250
    mask = torch.tensor([0.0, 1.0])
    exact = {"mean": float(cond.mean()[0]), "main_mode_weight": float(cond.weights.max())}
    res = {"exact": exact, "command": "python benchmarks/inpainting_oracle.py", "methods": {}}
    j = int(cond.weights.argmax())
    runs = {
        "replacement": lambda: inpaint("ddpm", den, sch, torch.tensor([[xk, 0.0]]).repeat(B * K, 1), mask, ts, generator=0),
        "repaint r=5 j=5": lambda: inpaint("ddpm", den, sch, torch.tensor([[xk, 0.0]]).repeat(B * K, 1), mask, ts,
                                           resamplings=5, jump_length=5, generator=0),
        "repaint r=10 j=10": lambda: inpaint("ddpm", den, sch, torch.tensor([[xk, 0.0]]).repeat(B * K, 1), mask, ts,
                                             resamplings=10, jump_length=10, generator=0),
        "smc 250 particles": lambda: inpaint_smc(den, sch, torch.tensor([[xk, 0.0]]).repeat(B, 1), mask, ts,
                                                 particles=K, seed=1).reshape(B * K, 2),
    }  # fmt: skip
    for name, run in runs.items():
        u = run()[:, 1].double().reshape(B, K)
        main_mode = (cond.component_of(u.reshape(-1, 1)) == j).reshape(B, K).double()
        stats = {}
        for key, v in (("mean", u.mean(1)), ("main_mode_weight", main_mode.mean(1))):
            se = float(v.std() / math.sqrt(B))
            stats[key] = {"value": float(v.mean()), "se": se, "z": (float(v.mean()) - exact[key]) / se}
        res["methods"][name] = stats
        print(name, json.dumps(stats), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inpainting_oracle.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
