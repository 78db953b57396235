"""The difflab command line: train, sample (.png / .npz), demo, and its error messages."""

from pathlib import Path

import numpy as np
import pytest

from difflab.cli import DEMO_CONFIG, main

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--set",
    "data.limit=64",
    "--set",
    "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, head_channels=8, groups=4}",
    "--set",
    "train.steps=2",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.threads=1",
    "--set",
    "sample.solver='ddim'",
    "--set",
    "sample.steps=2",
]


def test_demo_config_is_the_shipped_digits_config():
    assert (ROOT / "configs" / "digits.toml").read_text() == DEMO_CONFIG


def test_train_then_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", str(ROOT / "configs" / "digits.toml"), *FAST, "--set", f"train.out='{run}'", "--no-progress"])
        == 0
    )
    assert "trained 2 steps" in capsys.readouterr().out
    out = tmp_path / "s.npz"
    assert (
        main(["sample", str(run), "--solver", "euler", "--steps", "2", "--n", "3", "--seed", "1", "--out", str(out)])
        == 0
    )
    arr = np.load(out)["samples"]
    assert arr.shape == (3, 1, 8, 8) and arr.min() >= 0 and arr.max() <= 1
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    # a second `train` resumes at the final step and does nothing more
    assert (
        main(["train", str(ROOT / "configs" / "digits.toml"), *FAST, "--set", f"train.out='{run}'", "--no-progress"])
        == 0
    )
    assert "resumed" in capsys.readouterr().out


def test_errors_are_messages(tmp_path, capsys):
    assert main(["train", str(ROOT / "configs" / "digits.toml"), "--set", "train.setps=3"]) == 2
    assert "train.setps" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "none.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    foreign = tmp_path / "ck"
    foreign.mkdir()
    (foreign / "state.json").write_text('{"format": "something-else"}')
    assert main(["sample", str(foreign), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a difflab checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample"])


def test_demo_writes_its_files(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", *FAST]) == 0
    for name in ("samples.png", "samples.npz", "denoising.png", "loss.png"):
        assert (out / name).exists(), name
    arr = np.load(out / "samples.npz")["samples"]
    assert arr.shape[0] >= 256 and arr.shape[1:] == (1, 8, 8) and arr.min() >= 0 and arr.max() <= 1


def test_eval_writes_a_json_report(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    assert (
        main(["train", str(ROOT / "configs" / "digits.toml"), *FAST, "--set", f"train.out='{run}'", "--no-progress"])
        == 0
    )
    out = tmp_path / "eval.json"
    argv = ["eval", str(run), "--metrics", "fid,kid,pr", "--solver", "ddim", "--steps", "2", "--n", "130"]
    assert main([*argv, "--n-real", "200", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["fid"] > 0 and 0 <= report["precision"] <= 1 and report["nfe"] == 2
    assert main([*argv, "--metrics", "fid,bogus", "--out", str(out)]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_sample_label_errors(tmp_path, capsys):
    run = tmp_path / "cond"
    cond = [
        "--set",
        "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, head_channels=8, groups=4, num_classes=true}",
    ]
    assert (
        main(
            [
                "train",
                str(ROOT / "configs" / "digits.toml"),
                *FAST,
                *cond,
                "--set",
                f"train.out='{run}'",
                "--no-progress",
            ]
        )
        == 0
    )
    out = str(tmp_path / "s.png")
    assert main(["sample", str(run), "--label", "3", "--guidance", "2", "--n", "2", "--out", out]) == 0
    assert main(["sample", str(run), "--label", "11", "--out", out]) == 2
    assert "label 11 is outside the model's classes 0..9" in capsys.readouterr().err
    assert main(["sample", str(run), "--label", "3", "--guidance", "inf", "--out", out]) == 2
    assert "finite number, got inf" in capsys.readouterr().err
