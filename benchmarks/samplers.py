"""Fast samplers vs diffusers on exact Gaussian-mixture denoisers (GitHub issue #3).

    .venv/bin/python benchmarks/samplers.py            # ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/samplers.py --quick    # a smoke run

Every sampler sees the same exact posterior mean (a DDPM linear schedule, T = 1000) and starts
from the same x_T, drawn from the exact marginal p_T.  Reported per NFE: Frechet distance (FD)
of the samples to the exact data moments, sliced Wasserstein distance (SW) to fresh data,
mode-weight error (total variation between the sampled component frequencies and the
weights), and the Monte-Carlo floor (the same statistics for fresh exact samples).  diffusers
is an optional dependency (``pip install -e .[bench]``).  Results: the ``samplers`` section
of BENCHMARKS.md, ``benchmarks/results/samplers_results.csv`` and ``samplers_fd.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from difflab import schedules, solvers, timesteps, toy
from difflab.interop import sample_with_scheduler
from difflab.metrics.fid import frechet_distance, gaussian_stats
from difflab.metrics.sliced import sliced_wasserstein
from difflab.solvers import sample
from difflab.solvers.dpm_solver import singlestep_orders
from report import RESULTS, stamp, write_section

NFES = [5, 6, 8, 10, 15, 20, 50]
SCH = schedules.DiscreteVP.ddpm_linear()


# --- the data ---------------------------------------------------------------------------
def mixtures(held_out: bool) -> dict[str, toy.GaussianMixture]:
    """Benchmark mixtures (sharp and broad modes, 2-16 dims) and held-out ones that no choice
    in this file was made on."""
    if held_out:
        return {
            "held-out d3 K5 (0.05-0.5)": toy.GaussianMixture.random(3, 5, seed=101, std_range=(0.05, 0.5)),
            "held-out d12 K8 (0.1-1)": toy.GaussianMixture.random(12, 8, seed=102, std_range=(0.1, 1.0)),
            "held-out d6 K2 (0.02-0.1), spread 1": toy.GaussianMixture.random(
                6, 2, seed=103, spread=1.0, std_range=(0.02, 0.1)
            ),
        }
    return {
        "d2 K8 sharp (0.02-0.2)": toy.GaussianMixture.random(2, 8, seed=11, std_range=(0.02, 0.2)),
        "d8 K4 broad (0.3-1)": toy.GaussianMixture.random(8, 4, seed=12, std_range=(0.3, 1.0)),
        "d16 K6 mixed (0.05-1)": toy.GaussianMixture.random(16, 6, seed=13, std_range=(0.05, 1.0)),
    }


def sigma_data(gm: toy.GaussianMixture) -> float:
    """The data's per-dimension standard deviation (EDM's sigma_data), a statistic of the data."""
    return float((gm.cov().trace() / gm.dim).sqrt())


class FastPosterior:
    """E[x0 | x_t] of a Gaussian mixture at scalar (alpha, sigma), batched over components with
    matmuls (the same formula as toy.GaussianMixture.posterior_mean, checked against it)."""

    def __init__(self, gm: toy.GaussianMixture) -> None:
        self.U, self.l, self.mu = gm.evecs, gm.evals, gm.means
        self.muU = torch.einsum("kd,kde->ke", gm.means, gm.evecs)
        self.logw = gm.weights.log()

    def components(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable component of each data point (toy.GaussianMixture.component_of)."""
        y = torch.matmul(x.to(torch.float64).unsqueeze(0), self.U) - self.muU[:, None, :]
        logn = -0.5 * (y * y / self.l[:, None, :]).sum(-1) - 0.5 * self.l.log().sum(-1)[:, None]
        return (logn + self.logw[:, None]).argmax(0)

    def __call__(self, x: torch.Tensor, a: float, s: float) -> torch.Tensor:
        x = x.to(torch.float64)
        y = torch.matmul(x.unsqueeze(0), self.U) - a * self.muU[:, None, :]
        v = a * a * self.l + s * s
        logn = -0.5 * (y * y / v[:, None, :]).sum(-1) - 0.5 * v.log().sum(-1)[:, None]
        r = torch.softmax(logn + self.logw[:, None], 0)
        post = torch.matmul(y * (a * self.l / v)[:, None, :], self.U.transpose(1, 2)) + self.mu[:, None, :]
        return (r[:, :, None] * post).sum(0)


def difflab_denoiser(post: FastPosterior) -> Callable:
    def den(x: torch.Tensor, t) -> torch.Tensor:
        t = float(t) if not isinstance(t, torch.Tensor) or t.numel() == 1 else t
        if isinstance(t, torch.Tensor):  # per-sample times (parallel): group by time
            out = torch.empty_like(x, dtype=torch.float64)
            for tt in t.unique():
                m = t == tt
                out[m] = post(x[m], float(SCH.alpha(tt)), float(SCH.sigma(tt)))
            return out.to(x.dtype)
        return post(x, float(SCH.alpha(t)), float(SCH.sigma(t))).to(x.dtype)

    return den


# --- metrics ----------------------------------------------------------------------------
class Metrics:
    def __init__(self, gm: toy.GaussianMixture, n: int, seed: int) -> None:
        self.gm, self.n, self.post = gm, n, FastPosterior(gm)
        self.mu, self.cov = gm.mean(), gm.cov()
        g = torch.Generator().manual_seed(seed)
        self.fresh = gm.sample(n, g)  # for SW
        floors = [self(gm.sample(n, g), floor=True) for _ in range(4)]
        self.floor = {k: statistics.mean(f[k] for f in floors) for k in floors[0]}
        self.floor_sd = {k: statistics.stdev(f[k] for f in floors) for k in floors[0]}

    def __call__(self, x: torch.Tensor, floor: bool = False) -> dict[str, float]:
        x = x.to(torch.float64)
        if not torch.isfinite(x).all():
            return {"fd": math.inf, "sw": math.inf, "mode": 1.0}
        fd = frechet_distance(*gaussian_stats(x), self.mu, self.cov)
        sw = sliced_wasserstein(x, self.fresh, n_projections=128, generator=0)
        k = self.post.components(x)
        freq = torch.bincount(k, minlength=self.gm.K).to(torch.float64) / x.shape[0]
        return {"fd": fd, "sw": sw, "mode": 0.5 * float((freq - self.gm.weights).abs().sum())}


# --- difflab methods --------------------------------------------------------------------------
GRIDS: dict[str, Callable[[int], torch.Tensor]] = {
    "logSNR": lambda n: timesteps.log_snr_uniform(SCH, n, t_end=0),
    "karras": lambda n: timesteps.karras(SCH, n, t_end=0),
    "uniform": lambda n: timesteps.uniform(SCH, n, t_end=0),
    "quadratic": lambda n: timesteps.quadratic(SCH, n, t_end=0),
}


def difflab_methods(sd: float) -> dict[str, tuple[str, dict, str]]:
    """name -> (solver, options, kind); kind 'one' = one evaluation per step, 'single' =
    singlestep orders spent by singlestep_orders, 'pndm' = three 4-evaluation PRK steps."""
    return {
        "ddim": ("ddim", {}, "one"),
        "plms": ("plms", {}, "one"),
        "pndm": ("pndm", {}, "pndm"),
        "deis-3": ("deis", {}, "one"),
        "dpm_solver-3": ("dpm_solver", {}, "single"),
        "dpmpp_2s": ("dpmpp_2s", {}, "single2"),
        "dpmpp_2m": ("dpmpp_2m", {}, "one"),
        "dpmpp_3m": ("dpmpp_3m", {}, "one"),
        "unipc-2 bh1": ("unipc", {}, "one"),
        "unipc-2 bh2": ("unipc", {"variant": "bh2"}, "one"),
        "gauss_ei-3 sd/2": ("gauss_ei", {"ab_order": 3, "sigma_data": sd / 2}, "one"),
    }


def run_difflab(den, x_T, name: str, opts: dict, kind: str, grid: str, nfe: int) -> tuple[torch.Tensor, int] | None:
    if kind == "one":
        ts = GRIDS[grid](nfe)
        solver = solvers.get(name, **opts)
    elif kind in ("single", "single2"):
        orders = [*singlestep_orders(nfe - 1, 3 if kind == "single" else 2), 1]  # + the final denoising step
        ts = GRIDS[grid](len(orders))
        solver = solvers.get(name, **opts, orders=tuple(orders))
    else:  # pndm: 3 PRK steps of 4 evaluations
        if nfe < 13:
            return None
        ts = GRIDS[grid](nfe - 9)
        solver = solvers.get(name, **opts)
    x, used = sample(solver, den, SCH, x_T, ts, dtype=torch.float64, return_nfe=True)
    assert used == nfe, (name, grid, nfe, used)
    return x, used


# --- diffusers ------------------------------------------------------------------------------
def diffusers_configs() -> dict[str, tuple[type, dict]]:
    import diffusers as D

    return {
        "DDIM": (D.DDIMScheduler, {}),
        "DDIM trailing": (D.DDIMScheduler, {"timestep_spacing": "trailing"}),
        "PNDM (PLMS)": (D.PNDMScheduler, {"skip_prk_steps": True}),
        "DEIS": (D.DEISMultistepScheduler, {}),
        "DPM++ 2M": (D.DPMSolverMultistepScheduler, {}),
        "DPM++ 2M Karras": (D.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
        "DPM++ 3M": (D.DPMSolverMultistepScheduler, {"solver_order": 3}),
        "DPM++ 3M Karras": (D.DPMSolverMultistepScheduler, {"solver_order": 3, "use_karras_sigmas": True}),
        "DPMSolverSinglestep": (D.DPMSolverSinglestepScheduler, {}),
        "UniPC": (D.UniPCMultistepScheduler, {}),
        "UniPC-3": (D.UniPCMultistepScheduler, {"solver_order": 3}),
        "Euler Karras": (D.EulerDiscreteScheduler, {"use_karras_sigmas": True}),
        "Heun Karras": (D.HeunDiscreteScheduler, {"use_karras_sigmas": True}),
        "LMS Karras": (D.LMSDiscreteScheduler, {"use_karras_sigmas": True}),
    }


def make_scheduler(cls: type, kw: dict):
    return cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **kw)


def diffusers_eps_model(post: FastPosterior, sched) -> Callable:
    """eps at diffusers' (possibly fractional) timestep tau: the noise level diffusers means by
    tau (log sigma interpolated between integer steps, as its _sigma_to_t inverts)."""
    ac = sched.alphas_cumprod.to(torch.float64)
    log_sig = (((1 - ac) / ac) ** 0.5).log()

    def model(x: torch.Tensor, tau) -> torch.Tensor:
        tau = float(tau)
        lo = min(max(math.floor(tau), 0), len(ac) - 2)
        w = tau - lo
        sig = math.exp(float(log_sig[lo] * (1 - w) + log_sig[lo + 1] * w))
        a = 1 / math.sqrt(1 + sig * sig)
        s = sig * a
        x = x.to(torch.float64)
        return (x - a * post(x, a, s)) / s

    return model


def diffusers_steps(cls: type, kw: dict, nfe: int) -> int | None:
    """The number of inference steps whose model calls equal ``nfe`` (None if none does)."""
    for n in range(nfe, 0, -1):
        sched = make_scheduler(cls, kw)
        sched.set_timesteps(n)
        if len(sched.timesteps) == nfe:
            return n
        if len(sched.timesteps) < nfe:
            return None
    return None


def run_diffusers(post: FastPosterior, cls: type, kw: dict, x_T: torch.Tensor, nfe: int) -> torch.Tensor | None:
    n = diffusers_steps(cls, kw, nfe)
    if n is None:
        return None
    sched = make_scheduler(cls, kw)
    sched.set_timesteps(n)
    # diffusers' pipeline loop (x_T * init_noise_sigma for k-diffusion-type schedulers)
    return sample_with_scheduler(sched, diffusers_eps_model(post, sched), x_T.to(torch.float64))


# --- per-step overhead --------------------------------------------------------------------
def overhead(steps: int = 20, reps: int = 30) -> list[tuple[str, float, str, float]]:
    """Microseconds per step with a near-free model (batch 1), difflab vs diffusers interleaved."""
    import diffusers as D

    x = torch.randn(1, 4)
    den = lambda x, t: 0.5 * x  # noqa: E731
    eps = lambda x, t: 0.5 * x  # noqa: E731
    pairs = [
        ("ddim", {}, D.DDIMScheduler, {}),
        ("dpmpp_2m", {}, D.DPMSolverMultistepScheduler, {}),
        ("dpmpp_3m", {}, D.DPMSolverMultistepScheduler, {"solver_order": 3}),
        ("unipc", {}, D.UniPCMultistepScheduler, {}),
        ("deis", {}, D.DEISMultistepScheduler, {}),
    ]
    rows = []
    for name, opts, cls, kw in pairs:
        solver = solvers.get(name, **opts)
        sched = make_scheduler(cls, kw)
        ours, theirs = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            sample(solver, den, SCH, x, timesteps.log_snr_uniform(SCH, steps, t_end=0))
            ours.append((time.perf_counter() - t0) / steps)
            t0 = time.perf_counter()
            sched.set_timesteps(steps)
            xx = x
            for t in sched.timesteps:
                xx = sched.step(eps(xx, t), t, xx).prev_sample
            theirs.append((time.perf_counter() - t0) / steps)
        rows.append((name, 1e6 * statistics.median(ours), f"{cls.__name__}{kw or ''}", 1e6 * statistics.median(theirs)))
    return rows


# --- the run ------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="samples per method (the same x_T for all)")
    ap.add_argument("--quick", action="store_true", help="one mixture, NFE 5 and 10, 1000 samples")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild tables and plot from samplers_results.csv (re-times overhead)",
    )
    args = ap.parse_args()
    if args.report_only:
        with open(RESULTS / "samplers_results.csv") as f:
            rows = [
                {**r, "nfe": int(r["nfe"]), **{k: float(r[k]) for k in ("fd", "sw", "mode")}} for r in csv.DictReader(f)
            ]
        plot(rows, RESULTS / "samplers_fd.png")
        md = report(rows, choose_pick(rows, [5, 10]), overhead(), args.n, float("nan"))
        print(md)
        if not args.no_write:
            cmd = "python benchmarks/samplers.py" + (f" --n {args.n}" if args.n != 3000 else "")
            write_section("samplers", "## Samplers vs diffusers\n\n" + stamp(cmd) + "\n" + md)
        return
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    nfes = [5, 10] if args.quick else NFES
    n = 1000 if args.quick else args.n
    t_start = time.time()
    rows: list[dict] = []
    main_mix = mixtures(False)
    if args.quick:
        main_mix = dict(list(main_mix.items())[:1])
    dconf = diffusers_configs()

    def evaluate(mname: str, gm: toy.GaussianMixture, methods: dict, grids: list[str], diff: dict, nfe_list: list[int]):
        post = FastPosterior(gm)
        g = torch.Generator().manual_seed(0)
        x0 = gm.sample(n, g)
        x_check = torch.randn(64, gm.dim, dtype=torch.float64, generator=g)
        assert torch.allclose(post(x_check, 0.3, 0.9), gm.posterior_mean(x_check, 0.5, _Const(0.3, 0.9)), atol=1e-10)
        x_T = float(SCH.alpha(1.0)) * x0 + float(SCH.sigma(1.0)) * torch.randn(
            n, gm.dim, generator=g, dtype=torch.float64
        )
        met = Metrics(gm, n, seed=1)
        den = difflab_denoiser(post)
        base = {"mixture": mname}
        rows.append({**base, "library": "floor", "method": "fresh exact samples", "grid": "", "nfe": 0, **met.floor})
        rows.append({**base, "library": "floor-sd", "method": "sd of the floor", "grid": "", "nfe": 0, **met.floor_sd})
        # the exact PF-ODE solution from the same x_T (paired reference: same Monte-Carlo noise)
        x_ref = sample(
            solvers.get("rk45", rtol=1e-7, atol=1e-7), den, SCH, x_T, GRIDS["logSNR"](2), dtype=torch.float64
        )
        rows.append({**base, "library": "exact-ode", "method": "rk45 tol 1e-7", "grid": "", "nfe": 0, **met(x_ref)})
        best_grid: dict[str, str] = {}
        for nfe in nfe_list:
            for label, (name, opts, kind) in methods.items():
                for grid in grids:
                    if (kind == "pndm" and grid != "uniform") or (
                        name in ("ddim", "plms") and grid not in ("logSNR", "uniform")
                    ):
                        continue
                    if nfe > 10 and len(grids) > 1 and grid not in ("logSNR", best_grid.get(label)):
                        continue  # above 10 NFE: each solver on log-SNR and on its best grid at 10 NFE
                    out = run_difflab(den, x_T, name, opts, kind, grid, nfe)
                    if out is not None:
                        rows.append(
                            {**base, "library": "difflab", "method": label, "grid": grid, "nfe": nfe, **met(out[0])}
                        )
            for label, (cls, kw) in diff.items():
                x = run_diffusers(post, cls, kw, x_T, nfe)
                if x is not None:
                    rows.append({**base, "library": "diffusers", "method": label, "grid": "", "nfe": nfe, **met(x)})
            if nfe == 10:
                for label in methods:
                    cands = [
                        (r["fd"], r["grid"])
                        for r in rows
                        if r["mixture"] == mname and r["method"] == label and r["nfe"] == 10
                    ]
                    if cands:
                        best_grid[label] = min(cands)[1]
            print(f"  {mname} NFE {nfe} done ({time.time() - t_start:.0f} s)", flush=True)
        # adaptive solvers: the evaluations they choose
        for name, tols in (("rk45", (1e-3, 1e-5)), ("dpm_solver_adaptive", (0.05, 1e-3))):
            for tol in tols:
                x, used = sample(
                    solvers.get(name, rtol=tol, atol=tol),
                    den,
                    SCH,
                    x_T,
                    GRIDS["logSNR"](2),
                    dtype=torch.float64,
                    return_nfe=True,
                )
                rows.append(
                    {
                        **base,
                        "library": "difflab",
                        "method": f"{name} tol {tol:g}",
                        "grid": "adaptive",
                        "nfe": used,
                        **met(x),
                    }
                )

    for mname, gm in main_mix.items():
        sd = sigma_data(gm)
        evaluate(mname, gm, difflab_methods(sd), list(GRIDS), dconf, nfes)

    # the pick, made on the benchmark mixtures: lowest geometric-mean FD above floor at 5 and 10 NFE
    pick = choose_pick(rows, [5, 10])
    if not args.quick:
        for mname, gm in mixtures(True).items():
            sd = sigma_data(gm)
            label, grid = pick
            methods = {label: difflab_methods(sd)[label]}
            evaluate(mname, gm, methods, [grid], dconf, [5, 10, 20])
    over = overhead(reps=5 if args.quick else 30)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "samplers_results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["mixture", "library", "method", "grid", "nfe", "fd", "sw", "mode"])
        w.writeheader()
        w.writerows(rows)
    plot(rows, RESULTS / "samplers_fd.png")
    md = report(rows, pick, over, n, time.time() - t_start)
    print(md)
    if not args.no_write and not args.quick:
        cmd = "python benchmarks/samplers.py" + (f" --n {args.n}" if args.n != 3000 else "")
        write_section("samplers", "## Samplers vs diffusers\n\n" + stamp(cmd) + "\n" + md)


class _Const:
    """A stand-in schedule with constant (alpha, sigma), to check FastPosterior against toy."""

    def __init__(self, a: float, s: float) -> None:
        self.a, self.s = a, s

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.a)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.s)


# --- analysis -----------------------------------------------------------------------------
def _excess(rows: list[dict], paired: bool = False) -> dict[tuple, float]:
    floor = {r["mixture"]: r["fd"] for r in rows if r["library"] == ("exact-ode" if paired else "floor")}
    return {
        (r["mixture"], r["library"], r["method"], r["grid"], r["nfe"]): r["fd"] - floor[r["mixture"]]
        for r in rows
        if r["library"] in ("difflab", "diffusers") and r["grid"] != "adaptive"
    }


def choose_pick(rows: list[dict], nfes: list[int]) -> tuple[str, str]:
    ex = _excess(rows)
    mixes = sorted({k[0] for k in ex})
    cands = {(k[2], k[3]) for k in ex if k[1] == "difflab"}
    best, best_score = None, math.inf
    for m, g in sorted(cands):
        vals = [ex.get((mx, "difflab", m, g, nfe)) for mx in mixes for nfe in nfes]
        if any(v is None for v in vals):
            continue
        score = statistics.mean(math.log(max(v, 1e-4)) for v in vals)
        if score < best_score:
            best, best_score = (m, g), score
    return best


def noise_band(rows: list[dict], mixture: str) -> float:
    """Empirical noise of the paired excess: twice the lower quartile of |paired excess| over all
    methods at the largest NFE run on this mixture (robust to the methods that have not converged)."""
    exp = _excess(rows, paired=True)
    top = max(k[4] for k in exp if k[0] == mixture)
    vals = sorted(abs(v) for k, v in exp.items() if k[0] == mixture and k[4] == top)
    return 2 * vals[len(vals) // 4]


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets judged on the paired excess (FD minus the exact ODE solution's FD from the
    same x_T); the MC-floor version of the same numbers is in the table below."""
    exp = _excess(rows, paired=True)
    mixes = list(dict.fromkeys(r["mixture"] for r in rows if r["library"] == "floor"))
    out = [
        "### Targets (judged on the paired excess; 'noise' = twice the lower quartile of |paired excess| "
        "over all methods at the largest NFE run: 50, or 20 on held-out mixtures)",
        "",
        "| mixture | NFE | best difflab | best diffusers | ratio | noise | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in mixes:
        band = noise_band(rows, m)
        for nfe in (5, 10, 20):
            dn, dv = best_of(exp, m, "difflab", nfe)
            fn, fv = best_of(exp, m, "diffusers", nfe)
            if dv != dv:
                continue
            if nfe == 20:
                verdict = "at the floor" if dv <= band else f"{dv / band:.1f}x the noise above the floor"
            elif dv <= band and fv <= band:
                verdict = "both at the floor"
            elif dv <= 0.5 * fv or dv <= band:
                verdict = "met (<= half)"
            else:
                verdict = f"missed: {dv / fv:.2f}x instead of <= 0.5x"
            ratio = f"{dv / fv:.2f}" if fv > band else "-"
            out.append(f"| {m} | {nfe} | {dn}: {dv:.4f} | {fn}: {fv:.4f} | {ratio} | {band:.4f} | {verdict} |")
    return [*out, "", *ERROR_STUDY]


ERROR_STUDY = [
    "### Where the error comes from",
    "",
    "- **Time grid.** At 5-8 NFE the grid matters more than the solver. The log-SNR grid (DPM-Solver's) "
    "spends its last evaluation denoising at sigma/alpha = 0.01, where nothing is left to do, and takes "
    "steps of 2.4 in lambda; grids uniform or quadratic in t stop at sigma/alpha ~ 0.2-1 and let the final "
    "denoising step cover the rest, which costs little FD (the posterior mean there is close to the ODE end "
    "point) and buys smaller steps where the modes form. Karras' rho = 7 grid crowds the low-noise end and "
    "is the worst at <= 10 NFE on this schedule (DPM++ 3M Karras: the largest errors of every library).",
    "- **First steps and warm-up.** The first step is first order in every multistep method, and that is "
    "harmless: at sigma/alpha = 157 the noise prediction is nearly constant. The damage is done by the next "
    "steps: data-prediction solvers (DPM-Solver++, UniPC) extrapolate x0, whose deviation from the mean grows "
    "like e^lambda while the noise is large, and noise-prediction solvers (DPM-Solver, DEIS) extrapolate eps, "
    "which decays like e^-lambda once the noise is below the data scale. Each is badly modelled by a polynomial "
    "in half of the range, at exactly the step sizes 5-10 NFE force.",
    "- **The fix: `gauss_ei`** splits x0 into the posterior mean of a Gaussian of the data's scale (integrated "
    "exactly) and a remainder F that is constant for Gaussian data, and runs Adams-Bashforth on F "
    "(DPM-Solver-v3's idea with closed-form statistics; sigma_data = half the data's per-dimension std). It "
    "removes most of the 5-8 NFE error on every mixture, seen and unseen.",
    "- **Last step.** Replacing the final denoising step by a second-order extrapolation of eps in sigma/alpha "
    "(DEIS' rho-AB to sigma = 0) changed FD by <= 10% in the error study, so the final step stays a plain "
    "denoising step; lower-order final steps (`lower_order_final`) did not help on this schedule either.",
    "- **DPM-Solver++(3M) of the reference code is second order.** Its second-difference term is weighted by "
    "half the Taylor coefficient (diffusers inherits this); difflab's `dpmpp_3m` integrates the quadratic "
    "interpolant exactly and converges at third order (`tests/test_fast_solvers.py`, convergence harness).",
    "- **Noise.** With 3000 samples the FD of even the exact ODE solution from a given x_T differs from the "
    "Monte-Carlo mean floor by up to ~0.15 (d16), so 'FD above floor' cannot separate methods beyond ~10 NFE; "
    "the paired excess (same x_T, exact ODE subtracted) can, to the 'noise' column's level.",
]


def best_of(ex: dict, mixture: str, library: str, nfe: int) -> tuple[str, float]:
    cands = [
        (v, f"{k[2]}" + (f" / {k[3]}" if k[3] else ""))
        for k, v in ex.items()
        if k[0] == mixture and k[1] == library and k[4] == nfe
    ]
    if not cands:
        return "-", math.nan
    v, name = min(cands)
    return name, v


def report(rows: list[dict], pick: tuple[str, str], over: list, n: int, seconds: float) -> str:
    ex = _excess(rows)
    exp = _excess(rows, paired=True)
    floor = {r["mixture"]: r for r in rows if r["library"] == "floor"}
    floor_sd = {r["mixture"]: r for r in rows if r["library"] == "floor-sd"}
    mixes = list(dict.fromkeys(r["mixture"] for r in rows))
    out = [
        f"{n} samples per method, every method from the same x_T ~ p_T (exact marginal at t = 1), DDPM linear "
        f"schedule (T = 1000), exact mixture denoiser in float64 for every library"
        + (f"; run time {seconds / 60:.1f} min. " if seconds == seconds else " (tables rebuilt from the CSV). ")
        + "FD: Frechet distance to the exact data moments; 'above floor' subtracts the mean FD of fresh exact samples "
        "(4 draws; its sd is shown). 'paired' columns subtract instead the FD of the exact probability-flow ODE "
        "solution from the same x_T (rk45, tol 1e-7), which cancels most Monte-Carlo noise. Up to 10 NFE every "
        "solver runs on every grid; above, each solver on log-SNR and on its best grid at 10 NFE. "
        "Full results: `benchmarks/results/samplers_results.csv`.",
        "",
        f"**The pick** (chosen on the first three mixtures by the geometric mean of FD above floor at 5 and 10 NFE): "
        f"`{pick[0]}` on the `{pick[1]}` grid (`gauss_ei` uses sigma_data = half the data's per-dimension std, a "
        "statistic of the data, not a tuned value).",
        "",
        *targets(rows),
        "",
        "### Best difflab vs best diffusers, FD above the floor",
        "",
        "| mixture | floor (sd) | NFE | best difflab | FD-floor | best diffusers | FD-floor | ratio | the pick | "
        "paired: difflab | paired: diffusers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in mixes:
        for nfe in sorted({k[4] for k in ex if k[0] == m}):
            dn, dv = best_of(ex, m, "difflab", nfe)
            fn, fv = best_of(ex, m, "diffusers", nfe)
            pv = ex.get((m, "difflab", pick[0], pick[1], nfe), math.nan)
            ratio = dv / fv if fv > 0 else math.nan
            _, pdv = best_of(exp, m, "difflab", nfe)
            _, pfv = best_of(exp, m, "diffusers", nfe)
            out.append(
                f"| {m} | {floor[m]['fd']:.4f} ({floor_sd[m]['fd']:.4f}) | {nfe} | {dn} | {dv:.4f} | {fn} | {fv:.4f} | "
                f"{ratio:.2f} | {pv:.4f} | {pdv:.4f} | {pfv:.4f} |"
            )
    out += ["", "### Every method at 5, 10 and 20 NFE (FD above floor; mean over the three benchmark mixtures)", ""]
    bench = [m for m in mixes if not m.startswith("held-out")]
    methods = sorted({(k[1], k[2], k[3]) for k in ex if k[0] in bench})
    out += ["| library | method | grid | 5 | 10 | 20 | 50 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for lib, m, g in methods:
        cells = []
        for nfe in (5, 10, 20, 50):
            vals = [ex.get((mx, lib, m, g, nfe)) for mx in bench]
            cells.append("-" if any(v is None for v in vals) else f"{statistics.mean(vals):.4f}")
        out.append(f"| {lib} | {m} | {g} | " + " | ".join(cells) + " |")
    out += ["", "### Sliced Wasserstein and mode-weight error at 5 / 10 / 20 NFE (best-FD method of each library)", ""]
    out += [
        "| mixture | NFE | library | method | SW | SW floor | mode TV | mode TV floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in mixes:
        for nfe in (5, 10, 20):
            for lib in ("difflab", "diffusers"):
                name, _ = best_of(ex, m, lib, nfe)
                meth, _, grid = name.partition(" / ")
                r = next(
                    (
                        r
                        for r in rows
                        if r["mixture"] == m
                        and r["library"] == lib
                        and r["method"] == meth
                        and r["grid"] == grid
                        and r["nfe"] == nfe
                    ),
                    None,
                )
                if r:
                    out.append(
                        f"| {m} | {nfe} | {lib} | {name} | {r['sw']:.4f} | {floor[m]['sw']:.4f} | {r['mode']:.4f} | {floor[m]['mode']:.4f} |"
                    )
    out += [
        "",
        "### Adaptive solvers (they choose their own evaluations)",
        "",
        "| mixture | method | NFE | FD-floor |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["grid"] == "adaptive":
            out.append(f"| {r['mixture']} | {r['method']} | {r['nfe']} | {r['fd'] - floor[r['mixture']]['fd']:.4f} |")
    out += [
        "",
        "### Per-step overhead, near-free model, batch 1 (median of interleaved runs of 20 steps)",
        "",
        "| difflab | us/step | diffusers | us/step | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, us, dname, dus in over:
        out.append(f"| {name} | {us:.0f} | {dname} | {dus:.0f} | {us / dus:.2f} |")
    out += ["", "![paired FD excess vs NFE](benchmarks/results/samplers_fd.png)", ""]
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = _excess(rows, paired=True)
    mixes = [m for m in dict.fromkeys(r["mixture"] for r in rows) if not m.startswith("held-out")]
    fig, axes = plt.subplots(1, len(mixes), figsize=(5 * len(mixes), 4), squeeze=False)
    for ax, m in zip(axes[0], mixes):
        nfes = sorted({k[4] for k in ex if k[0] == m})
        for lib, style in (("difflab", "-o"), ("diffusers", "--s")):
            best = [max(best_of(ex, m, lib, nfe)[1], 1e-4) for nfe in nfes]
            ax.plot(nfes, best, style, label=f"best {lib}")
        for lib, meth, grid, style in (
            ("diffusers", "DPM++ 2M", "", ":"),
            ("diffusers", "UniPC", "", ":"),
            ("difflab", "dpmpp_2m", "logSNR", "-."),
        ):
            vals = [max(ex.get((m, lib, meth, grid, nfe), math.nan), 1e-4) for nfe in nfes]
            ax.plot(nfes, vals, style, alpha=0.7, label=f"{lib} {meth} {grid}".strip())
        ax.axhline(noise_band(rows, m), color="grey", lw=0.8, label="noise of the paired excess")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(m)
        ax.set_xlabel("NFE")
        ax.set_ylabel("FD - FD(exact ODE, same x_T), clipped at 1e-4")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
