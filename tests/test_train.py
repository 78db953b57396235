"""Trainer: exact resume, atomic checkpoints, corrupt / foreign checkpoints, NaN loss, config errors."""

import json
import os

import pytest
import torch

from difflab.train import CheckpointError, ConfigError, Trainer, TrainingError, load_config, load_model
from difflab.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from difflab.train.config import from_dict

TINY = [
    "data.name='digits'",
    "data.limit=64",
    "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[4], head_channels=8, groups=4, dropout=0.1}",
    "train.batch_size=8",
    "train.warmup=2",
    "train.log_every=2",
    "train.sample_every=0",
    "train.ckpt_every=3",
    "train.keep=5",
    "train.threads=1",
    "sample.steps=3",
    "sample.n=4",
    "sample.solver='ddim'",
]


def tiny(tmp_path, *more):
    return load_config(None, [*TINY, f"train.out='{tmp_path}'", *more])


def _weights(tr):
    return {k: v.clone() for k, v in tr.net.state_dict().items()} | {
        "ema." + k: v.clone() for k, v in tr.ema.net.state_dict().items()
    }


def test_resume_is_exact(tmp_path):
    """6 steps straight == 3 steps, a fresh process-like Trainer, resume, 3 more (bitwise)."""
    a = Trainer(tiny(tmp_path / "a", "train.steps=6"), progress=False, log=lambda s: None)
    a.fit()
    b1 = Trainer(tiny(tmp_path / "b", "train.steps=3"), progress=False, log=lambda s: None)
    b1.fit()
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    b2 = Trainer(tiny(tmp_path / "b", "train.steps=6"), progress=False, log=lambda s: None)
    b2.fit()
    assert b2.step == 6
    wa, wb = _weights(a), _weights(b2)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = a.opt.state_dict()["state"], b2.opt.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_channels_last_trains_the_same_and_resumes_exactly(tmp_path):
    """train.channels_last changes the memory format, not the mathematics: the same losses as the
    default format (up to convolution rounding), bitwise-exact resume, checkpoints that load anywhere."""
    quiet = dict(progress=False, log=lambda s: None)
    a = Trainer(tiny(tmp_path / "a", "train.steps=4"), **quiet)
    a.fit()
    b = Trainer(tiny(tmp_path / "b", "train.steps=4", "train.channels_last=true"), **quiet)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in b.net.parameters() if p.dim() == 4)
    b.fit()
    la, lb = torch.tensor([v for _, v in a.history]), torch.tensor([v for _, v in b.history])
    assert len(la) == 4 and torch.allclose(la, lb, rtol=1e-4)
    c = Trainer(tiny(tmp_path / "c", "train.steps=2", "train.channels_last=true"), **quiet)
    c.fit()
    c = Trainer(tiny(tmp_path / "c", "train.steps=4", "train.channels_last=true"), **quiet)
    c.fit()
    wb, wc = _weights(b), _weights(c)
    assert all(torch.equal(wb[k], wc[k]) for k in wb)
    net, *_ = load_model(tmp_path / "b")
    assert all(torch.equal(v, wb["ema." + k]) for k, v in net.state_dict().items())
    with pytest.raises(ConfigError, match=r"channels_last needs image data.*\(256, 2\)"):
        Trainer(
            tiny(
                tmp_path / "d",
                "data.name='toy2d'",
                "data.n=256",
                "model.network='mlp'",
                "model.args={}",
                "train.channels_last=true",
            ),
            **quiet,
        )


def test_resume_a_checkpoint_written_before_newer_config_keys(tmp_path):
    """A config key added later (with a default) must not block resuming an older checkpoint."""
    Trainer(tiny(tmp_path, "train.steps=3"), progress=False, log=lambda s: None).fit()
    state_file = latest_checkpoint(tmp_path / "checkpoints") / "state.json"
    state = json.loads(state_file.read_text())
    for key in ("captions", "text_max_length"):
        del state["config"]["model"][key]
    state_file.write_text(json.dumps(state))
    tr = Trainer(tiny(tmp_path, "train.steps=5"), progress=False, log=lambda s: None)
    tr.fit()
    assert tr.step == 5


def test_checkpoint_files_and_sampling(tmp_path):
    tr = Trainer(tiny(tmp_path, "train.steps=3", "train.grad_accum=2", "train.bf16=true"), progress=False)
    ckpt = tr.fit()
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    }
    assert (tmp_path / "log.csv").read_text().startswith("step,loss,lr,grad_norm")
    assert (tmp_path / "loss.png").exists()
    net, sch, cfg, state = load_model(tmp_path)
    assert state["step"] == 3 and cfg.train.grad_accum == 2
    from difflab.train import generate

    x = generate(net, sch, cfg, 5, seed=0, batch_size=2)
    y = generate(net, sch, cfg, 5, seed=0, batch_size=5)
    assert x.shape == (5, 1, 8, 8) and torch.allclose(x, y, atol=1e-5)  # batch-size invariant


def test_half_written_and_corrupt_checkpoints_are_skipped(tmp_path):
    tr = Trainer(tiny(tmp_path, "train.steps=6"), progress=False)
    tr.fit()
    ck = tmp_path / "checkpoints"
    assert [s for s, _ in list_checkpoints(ck)] == [3, 6]
    # a killed writer leaves a temporary directory: never picked up
    (ck / ".tmp-step_0000009-999").mkdir()
    (ck / ".tmp-step_0000009-999" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(ck).name == "step_0000006"
    # corrupt the newest: resume falls back to step 3 with a warning
    f = ck / "step_0000006" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="SHA-256"):
        assert latest_checkpoint(ck).name == "step_0000003"
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(ck / "step_0000006")


def test_foreign_checkpoint(tmp_path):
    d = tmp_path / "step_0000001"
    d.mkdir()
    (d / "state.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a difflab checkpoint"):
        load_model(d)
    (d / "state.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(d)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no complete difflab checkpoint"), pytest.warns(UserWarning):
        load_model(tmp_path / "step_0000001" / "..")


def test_atomic_save_keeps_old_on_failure(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {"config": {}})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("difflab.train.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(2)}}, {"config": {}})
    assert latest_checkpoint(tmp_path).name == "step_0000001"


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path):
    tr = Trainer(tiny(tmp_path, "train.steps=3"), progress=False)
    tr.fit()
    tr2 = Trainer(tiny(tmp_path, "train.steps=10"), progress=False, log=lambda s: None)
    with torch.no_grad():
        next(tr2.net.parameters()).fill_(float("nan"))
    tr2.resume()
    with torch.no_grad():
        for p in tr2.net.parameters():
            p.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*step_0000003"):
        tr2.fit(resume=False)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_0000003"


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key train\.stpes \(did you mean 'steps'\?\)"):
        load_config(None, ["train.stpes=3"])
    with pytest.raises(ConfigError, match=r"train\.lr = 'fast' should be float"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="unknown section"):
        from_dict({"trian": {}})
    with pytest.raises(ConfigError, match=r"model\.prediction = 'noise' is not one of"):
        load_config(None, ["model.prediction='noise'"])
    with pytest.raises(ConfigError, match="must be positive"):
        load_config(None, ["train.steps=0"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="bad arguments for network 'unet'"):
        Trainer(tiny(tmp_path, "model.args.chanels=3"), progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Trainer(tiny(tmp_path, "data.name='fashion_mnist'", f"data.root='{tmp_path}/nowhere'"), progress=False)
    with pytest.raises(ConfigError, match="unknown solver"):
        Trainer(tiny(tmp_path, "sample.solver='ddimm'"), progress=False)


def test_yaml_config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 7\nmodel:\n  network: mlp\n")
    cfg = load_config(p, ["train.lr=0.01"])
    assert cfg.train.steps == 7 and cfg.model.network == "mlp" and cfg.train.lr == 0.01


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs"))))
def test_shipped_configs_parse(name):
    path = os.path.join(os.path.dirname(__file__), "..", "configs", name)
    cfg = load_config(path)
    assert cfg.train.steps > 0


def test_toy_mlp_and_hybrid_train(tmp_path):
    cfg = load_config(
        None,
        [
            "data.name='toy2d'",
            "data.n=256",
            "model.network='mlp'",
            "model.learned_variance=true",
            "model.args={width=16, depth=1}",
            "loss.kind='hybrid'",
            "train.steps=2",
            "train.batch_size=16",
            "train.sample_every=2",
            "train.threads=1",
            "sample.solver='ddpm'",
            "sample.solver_args={variance='learned'}",
            "sample.clip_x0=true",
            "sample.steps=3",
            "sample.n=8",
            f"train.out='{tmp_path}'",
        ],
    )
    tr = Trainer(cfg, progress=False)
    tr.fit()
    assert (tmp_path / "samples" / "step_0000002.png").exists()
    # ancestral sampling with the learned variances (and clipped x0) is seeded per sample
    a, b = tr.generate(n=8, seed=3), tr.generate(n=5, seed=3)
    torch.testing.assert_close(a[:5], b, rtol=1e-5, atol=1e-5)
