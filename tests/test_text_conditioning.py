"""Text-conditional training and sampling end to end: captions of the labels are encoded by
the offline MiniLM, the U-Net cross-attends to them, and ``difflab sample --prompt`` uses
classifier-free guidance with the empty prompt as the null condition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.cli import main
from difflab.train import Trainer, load_config, load_model, prompt_context

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.limit=64",
    "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, head_channels=8, groups=4, attention_resolutions=[4]}",
    "model.captions='digits'",
    "model.text_max_length=8",
    "train.steps=2",
    "train.warmup=1",
    "train.batch_size=8",
    "train.threads=1",
    "sample.solver='ddim'",
    "sample.steps=2",
]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("text") / "run"
    cfg = load_config(ROOT / "configs" / "digits.toml", [*TINY, f"train.out='{run}'"])
    tr = Trainer(cfg, progress=False)
    tr.fit()
    return run, tr


def test_text_model_has_cross_attention_and_sees_captions(text_run):
    _, tr = text_run
    assert tr.net.config["context_dim"] == 384
    # the training conditioning is a caption of the label; the null row is the empty prompt
    y = torch.tensor([3, 10])
    ctx, mask = tr.objective.conditioning.captions.lookup(y, torch.Generator().manual_seed(0))
    empty, _ = prompt_context(tr.cfg, [""])
    torch.testing.assert_close(ctx[1], empty[0])
    assert mask[0].sum() > mask[1].sum()


def test_prompt_changes_the_model_output(text_run):
    run, _ = text_run
    net, _, cfg, _ = load_model(run)
    ctx, mask = prompt_context(cfg, ["a photo of a three", "a photo of a seven"])
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    t = torch.full((2,), 500.0)
    with torch.no_grad():
        out = net(x, t, context=ctx, context_mask=mask)
    assert float((out[0] - out[1]).abs().max()) > 1e-6


def test_sample_with_prompt_and_guidance(text_run, tmp_path):
    run, _ = text_run
    out = tmp_path / "p.npz"
    argv = ["sample", str(run), "--prompt", "a photo of a three", "--guidance", "2", "--n", "3", "--out", str(out)]
    assert main(argv) == 0
    arr = np.load(out)["samples"]
    assert arr.shape == (3, 1, 8, 8) and np.isfinite(arr).all()


def test_prompt_errors(text_run, tmp_path, capsys):
    run, _ = text_run
    assert main(["sample", str(run), "--prompt", "a three", "--guidance", "nan", "--out", str(tmp_path / "a.png")]) == 2
    assert "guidance scale must be a finite number, got nan" in capsys.readouterr().err
    plain = tmp_path / "plain"
    cfg = [a for kv in TINY if "captions" not in kv for a in ("--set", kv)]
    assert (
        main(["train", str(ROOT / "configs" / "digits.toml"), *cfg, "--set", f"train.out='{plain}'", "--no-progress"])
        == 0
    )
    assert main(["sample", str(plain), "--prompt", "a three", "--out", str(tmp_path / "b.png")]) == 2
    assert "trained without text" in capsys.readouterr().err
    bad = load_config(ROOT / "configs" / "digits.toml", [*TINY, "model.captions='cifar'"])
    with pytest.raises(ValueError, match="unknown caption set 'cifar'"):
        Trainer(bad, progress=False)
