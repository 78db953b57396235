"""diffusers models in difflab (difflab.interop.from_diffusers), checked apples to apples: a small
randomly initialised diffusers model saved to a temporary folder, sampled by diffusers' own
schedulers (its pipeline loop, difflab.interop.sample_with_scheduler) and by difflab's solvers on the
grid matching the scheduler's timestep spacing, from the same x_T.

Random eps-prediction networks put x0_hat in the hundreds at t = T (x0 = (x - sigma eps) / alpha with
alpha_T = 0.006), so the agreement is measured relative to the samples' scale: max |x - x_ref| /
max(1, max |x_ref|) <= 1e-4 (the measured values, ~1e-6, are in BENCHMARKS.md, "diffusers interop")."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import require_module
from difflab import guidance, sample, solvers
from difflab.interop import (
    SUPPORTED_MODELS,
    diffusers_grid,
    from_diffusers,
    sample_with_scheduler,
    schedule_from_config,
)
from difflab.interop.diffusers import solver_for

TOL = 1e-4


@pytest.fixture(scope="module")
def D():
    import warnings

    D = require_module("diffusers", "interop")
    warnings.filterwarnings("ignore", module="diffusers")
    return D


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def tiny_unet(D, **kw):
    torch.manual_seed(0)
    return D.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
        **kw,
    ).eval()


@pytest.fixture(scope="module")
def pipelines(D, tmp_path_factory):
    """prediction_type -> (DDPMPipeline folder, its unet)."""
    out = {}
    unet = tiny_unet(D)
    for pred in ("epsilon", "v_prediction"):
        folder = tmp_path_factory.mktemp(f"ddpm_{pred}")
        D.DDPMPipeline(unet=unet, scheduler=D.DDPMScheduler(prediction_type=pred)).save_pretrained(folder)
        out[pred] = (folder, unet)
    return out


def x_T(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- the schedule and the grids ------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": torch.linspace(1e-3, 0.05, 500).tolist(), "num_train_timesteps": 500},
    ],
    ids=["linear", "scaled_linear", "cosine", "trained"],
)
def test_schedule_is_the_schedulers_alphas_cumprod(D, kw):
    s = D.DDPMScheduler(**kw)
    sch = schedule_from_config(dict(s.config))
    ac = s.alphas_cumprod.to(torch.float64)
    assert len(ac) == sch.T
    # diffusers' cumulative product runs in float32, difflab's in float64 of the same float32 betas
    torch.testing.assert_close(sch.alphas_cumprod, ac, rtol=3e-6, atol=0)
    # timestep i is at t = (i + 1) / T, where alpha^2 = alphas_cumprod[i]
    i = torch.tensor([0, 1, len(ac) // 2, len(ac) - 1])
    torch.testing.assert_close(sch.alpha((i + 1) / sch.T) ** 2, ac[i], rtol=3e-6, atol=0)


GRID_CASES = [
    ("DDIMScheduler", {}),
    ("DDIMScheduler", {"steps_offset": 1}),
    ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    ("DDIMScheduler", {"timestep_spacing": "linspace"}),
    ("DDIMScheduler", {"set_alpha_to_one": False, "steps_offset": 1}),
    ("DDPMScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    ("DDPMScheduler", {"timestep_spacing": "trailing"}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min"}),
    (
        "DPMSolverMultistepScheduler",
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "timestep_spacing": "linspace"},
    ),
    ("UniPCMultistepScheduler", {}),
    ("UniPCMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("DEISMultistepScheduler", {}),
]


@pytest.mark.parametrize("name,kw", GRID_CASES, ids=[f"{n}-{k}" for n, k in GRID_CASES])
def test_grid_evaluates_at_the_schedulers_timesteps(D, name, kw):
    s = getattr(D, name)(**kw)
    sc = dict(s.config, _class_name=name)
    sch = schedule_from_config(sc)
    T = sch.T
    for steps in (1, 2, 3, 5, 7, 10, 16, 20, 25, 50, 250):
        s.set_timesteps(steps)
        tau = s.timesteps.to(torch.float64)
        ts = diffusers_grid(sch, sc, steps)
        if name == "DDIMScheduler" and not kw.get("set_alpha_to_one", True):
            end = 1 / T  # alpha-bar_0; DDIM's last step to it from index 0 has zero length
        elif name in ("DDIMScheduler", "DDPMScheduler"):
            end = 0.0
        else:  # sigmas[-1]: 0 ("zero") or alpha-bar_0's ("sigma_min")
            end = 0.0 if float(s.sigmas[-1]) == 0 else 1 / T
        evals = (tau + 1) / T
        if float(evals[-1]) <= end + 1e-12:
            evals = evals[:-1]
        torch.testing.assert_close(ts[:-1], evals, rtol=0, atol=1e-12, msg=f"{name} {kw} steps={steps}")
        assert float(ts[-1]) == pytest.approx(end, abs=1e-12)


def test_ddim_family_grids_are_difflabs_discrete_spacings(D):
    """DDIM's spacings are difflab's timesteps.leading / trailing / linspace (no copy of them)."""
    from difflab import timesteps

    sch = schedule_from_config(dict(D.DDIMScheduler().config))
    for spacing, fn in (("leading", timesteps.leading), ("trailing", timesteps.trailing)):
        sc = {"_class_name": "DDIMScheduler", "timestep_spacing": spacing, "steps_offset": 1}
        for steps in (4, 10, 50):
            expect = fn(sch, steps, 1) if spacing == "leading" else fn(sch, steps)
            assert torch.equal(diffusers_grid(sch, sc, steps), expect)


# --- sampling: the same numbers -------------------------------------------------------------
SAMPLERS = [
    ("DDIMScheduler", {"steps_offset": 1}, 10),
    ("DDIMScheduler", {"timestep_spacing": "trailing"}, 10),
    ("DPMSolverMultistepScheduler", {}, 10),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"}, 7),
    ("UniPCMultistepScheduler", {}, 10),
    # bh1 to sigma = 0 is NaN in diffusers 0.42 (B(h) = h = -inf at the last step): end at sigma_min
    (
        "UniPCMultistepScheduler",
        {"solver_type": "bh1", "timestep_spacing": "leading", "steps_offset": 1, "final_sigmas_type": "sigma_min"},
        6,
    ),
]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name,kw,steps", SAMPLERS, ids=[f"{n}-{k}-{s}" for n, k, s in SAMPLERS])
def test_difflab_solvers_reproduce_diffusers_schedulers(D, pipelines, prediction, name, kw, steps):
    folder, unet = pipelines[prediction]
    den, sch = from_diffusers(folder)
    assert den.prediction == {"epsilon": "eps", "v_prediction": "v"}[prediction]
    # DDPMScheduler's default clip_sample = True is x0 post-processing that difflab leaves to the
    # caller (den.clip_sample reports it): compare the unclipped samplers
    assert den.clip_sample
    sched = getattr(D, name).from_config({**den.scheduler_config, "clip_sample": False}, **kw)
    sc = dict(sched.config, _class_name=name)
    xT = x_T((4, 1, 8, 8))
    with torch.no_grad():
        ref = sample_with_scheduler(sched, lambda x, tau: unet(x, tau).sample, xT, steps)
        solver, opts = solver_for(sc)
        assert solver == {"DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpmpp_2m"}.get(name, "unipc")
        x, nfe = sample(solvers.get(solver, **opts), den, sch, xT, diffusers_grid(sch, sc, steps), return_nfe=True)
    assert nfe == len(sched.timesteps) == steps
    assert torch.isfinite(ref).all() and float(ref.std()) > 0.1  # a real, non-trivial trajectory
    err = rel_err(x, ref)
    assert err < TOL, (name, kw, prediction, err)


def test_dit_with_learned_variance_labels_and_classifier_free_guidance(D, tmp_path):
    """DiTTransformer2DModel (learned sigma: twice the channels, the second half ignored as
    DiTPipeline does), a scheduler_config.json beside it, class labels, and difflab's
    classifier-free guidance eps = (1 + w) eps_c - w eps_u against DiTPipeline's
    eps_u + g (eps_c - eps_u) with g = 1 + w."""
    torch.manual_seed(0)
    dit = D.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=2,
        out_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    ).eval()
    dit.save_pretrained(tmp_path)
    sched = D.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False
    )
    sched.save_pretrained(tmp_path)
    den, sch = from_diffusers(tmp_path)
    assert den.learned_variance and den.num_classes == 10 and den.sample_shape == (2, 8, 8)
    xT, y, w = x_T((3, 2, 8, 8)), torch.tensor([1, 4, 9]), 2.0
    null = torch.full_like(y, 10)  # DiT's null class (label dropout): num_classes

    def guided_eps(x, tau):
        t = torch.as_tensor(tau).expand(2 * x.shape[0])
        eps = dit(torch.cat([x, x]), timestep=t, class_labels=torch.cat([y, null])).sample[:, :2]
        c, u = eps.chunk(2)
        return u + (1 + w) * (c - u)

    with torch.no_grad():
        ref = sample_with_scheduler(sched, guided_eps, xT, 10)
        x = sample("ddim", guidance.cfg(den, w, null={"y": 10}), sch, xT, den.grid(10), y=y)
    assert rel_err(x, ref) < TOL
    with pytest.raises(ValueError, match="class-conditional: pass y"):
        den(xT, 0.5)


def test_unet2dcondition_takes_context_as_encoder_hidden_states(D, tmp_path):
    torch.manual_seed(0)
    unet = D.UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        norm_num_groups=8,
        attention_head_dim=4,
    ).eval()
    unet.save_pretrained(tmp_path / "unet")
    sched = D.UniPCMultistepScheduler(prediction_type="v_prediction")
    sched.save_pretrained(tmp_path / "scheduler")  # found in ../scheduler/
    den, sch = from_diffusers(tmp_path / "unet")
    ctx, xT = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(2)), x_T((3, 1, 8, 8))
    with torch.no_grad():
        ref = sample_with_scheduler(sched, lambda x, tau: unet(x, tau, encoder_hidden_states=ctx).sample, xT, 8)
        name, opts = den.solver_for()
        x = sample(solvers.get(name, **opts), den, sch, xT, den.grid(8), context=ctx)
    assert rel_err(x, ref) < TOL
    with pytest.raises(ValueError, match="needs context"):
        den(xT, 0.5)


# --- bad input ----------------------------------------------------------------------------
def test_not_a_diffusers_folder_lists_what_it_holds(tmp_path):
    (tmp_path / "weights.pt").write_text("x")
    with pytest.raises(ValueError, match=r"neither model_index.json .* it holds weights.pt"):
        from_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        from_diffusers(tmp_path / "nope")


def test_unsupported_model_class_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(
        ValueError, match="AutoencoderKL is not supported; supported model classes: " + ", ".join(SUPPORTED_MODELS)
    ):
        from_diffusers(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableCascadePipeline", "prior": ["diffusers", "StableCascadeUNet"]})
    )
    with pytest.raises(ValueError, match="no unet/ or transformer/ part"):
        from_diffusers(tmp_path)


def test_pickled_weights_are_refused_and_a_missing_scheduler_is_named(D, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="no scheduler_config.json"):
        from_diffusers(tmp_path)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(ValueError, match="never unpickles"):
        from_diffusers(tmp_path, scheduler={"_class_name": "DDPMScheduler"})


def test_without_diffusers_the_error_says_how_to_install(monkeypatch, pipelines):
    folder, _ = pipelines["epsilon"]
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'difflab\[interop\]'"):
        from_diffusers(folder)


@pytest.mark.parametrize(
    "sc,match",
    [
        ({"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid' is not supported; supported: linear"),
        ({"rescale_betas_zero_snr": True}, "zero terminal SNR"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, "flow-matching"),
    ],
)
def test_schedules_difflab_does_not_represent_are_errors(sc, match):
    with pytest.raises(ValueError, match=match):
        schedule_from_config(sc)


def test_unsupported_scheduler_or_prediction_is_named(pipelines):
    folder, _ = pipelines["epsilon"]
    den, sch = from_diffusers(folder)
    with pytest.raises(ValueError, match="no difflab time grid for diffusers' EulerDiscreteScheduler; supported"):
        den.grid(10, scheduler="EulerDiscreteScheduler")
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        diffusers_grid(sch, {"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}, 10)
    with pytest.raises(ValueError, match="steps must be an integer in"):
        den.grid(0)
    with pytest.raises(ValueError, match="prediction_type 'flow_prediction' is not supported"):
        from_diffusers(folder, scheduler={"_class_name": "DDPMScheduler", "prediction_type": "flow_prediction"})
