"""evaluate_checkpoint on a tiny class-conditional digits model trained for a few steps here:
report keys and ranges, NFE accounting, determinism, guidance, JSON report, clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from difflab.evaluation import class_labels, evaluate_checkpoint, guided_generate, to_uint8
from difflab.nn.noisy_classifier import NoisyClassifier
from difflab.train import CheckpointError, Trainer, load_config, load_run

TINY = [
    "data.name='digits'",
    "data.limit=64",
    "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, head_channels=8, groups=4, num_classes=true}",
    "train.steps=4",
    "train.batch_size=16",
    "train.warmup=2",
    "train.sample_every=0",
    "train.ckpt_every=0",
    "train.threads=1",
    "sample.solver='ddim'",
    "sample.steps=3",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(load_config(None, [*TINY, f"train.out='{out}'"]), progress=False, log=lambda s: None).fit()
    return out


def test_report(run, tmp_path):
    path = tmp_path / "report.json"
    r = evaluate_checkpoint(
        run, "fid,kid,pr,accuracy,nll", "ddim", 3, n=130, seed=1, n_real=200, nll_n=4, nll_rtol=1e-2,
        nll_vlb_terms=5, out=path,
    )  # fmt: skip
    assert r["step"] == 4 and r["nfe"] == 3 and r["conditional"] and r["n"] == 130
    assert r["fid"] > 0 and math.isfinite(r["kid"]) and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert 0 <= r["accuracy"] <= 1
    # an untrained model is far from the data: many bits per dimension, but finite; bounds >= 0
    for key in ("bpd_ode", "bpd_vlb"):
        assert 0 < r[key] < 100 and r[key + "_sem"] >= 0
    assert json.loads(path.read_text()) == json.loads(json.dumps(r))
    again = evaluate_checkpoint(run, "fid", "ddim", 3, n=130, seed=1, n_real=200)
    assert again["fid"] == r["fid"]
    other = evaluate_checkpoint(run, ["fid"], "ddim", 3, n=130, seed=2, n_real=200)
    assert other["fid"] != r["fid"]


def test_nfe_of_solvers_and_guidance(run):
    model = load_run(run)
    # Heun: two evaluations per step, but the last step (to t = 0) is Euler (Karras et al. 2022, Alg. 1)
    assert guided_generate(model, 4, solver="heun", steps=3)[2] == 5
    x0, y0, _ = guided_generate(model, 10, seed=3, solver="ddim", steps=3, guidance=0.0)
    x2, y2, nfe = guided_generate(model, 10, seed=3, solver="ddim", steps=3, guidance=2.0)
    assert nfe == 3 and torch.equal(y0, torch.arange(10) % 10) and torch.equal(y0, y2)
    assert not torch.allclose(x0, x2)
    _, yc, _ = guided_generate(model, 10, seed=3, solver="ddim", steps=3, label=7)
    assert (yc == 7).all()
    clf = NoisyClassifier(1, 10, channels=8, channel_mults=[1, 2], image_size=8, head_channels=8)
    xg, yg, _ = guided_generate(model, 10, seed=3, solver="ddpm", steps=3, guidance=1.0, classifier=clf)
    assert xg.shape == (10, 1, 8, 8) and torch.isfinite(xg).all() and torch.equal(yg, y0)


def test_clear_errors(run, tmp_path):
    with pytest.raises(CheckpointError, match="cannot evaluate"):
        evaluate_checkpoint(tmp_path, "fid", n=4)  # a directory without a model
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError):
        evaluate_checkpoint(tmp_path, "fid", n=4)
    for bad in (10, -1, 2.0):
        with pytest.raises(ValueError, match="outside the model's trained classes"):
            evaluate_checkpoint(run, "accuracy", "ddim", 2, n=4, label=bad)
    for bad in (float("nan"), float("inf"), "3"):
        with pytest.raises(ValueError, match="finite number"):
            evaluate_checkpoint(run, "fid", "ddim", 2, n=4, guidance=bad)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_checkpoint(run, "fid,bogus", n=4)
    with pytest.raises(ValueError, match="class-conditional"):
        evaluate_checkpoint(run, "accuracy", "ddim", 2, n=4, unconditional=True)


def test_helpers():
    assert class_labels(5, 3).tolist() == [0, 1, 2, 0, 1]
    k = to_uint8(torch.tensor([-1.0, -0.999, 0.0, 1.0, 1.2]))
    assert k.dtype == torch.uint8 and k.tolist() == [0, 0, 128, 255, 255]
