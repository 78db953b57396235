"""Control and editing methods as objectives of the one Trainer: ControlNet on a frozen base run,
SDXL micro-conditioning on random crops, the low-noise refiner, retrieval-conditioned training."""

import json

import pytest
import torch

from difflab.data import hints
from difflab.train import ConfigError, Trainer, load_config, load_run

QUIET = dict(progress=False, log=lambda s: None)
TINY = [
    "data.name='digits'",
    "data.limit=64",
    "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[4], head_channels=8, groups=4, num_classes=true}",
    "train.batch_size=8",
    "train.warmup=2",
    "train.log_every=1",
    "train.sample_every=0",
    "train.ckpt_every=3",
    "train.threads=1",
    "sample.steps=3",
    "sample.n=4",
    "sample.solver='ddim'",
]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    Trainer(load_config(None, [*TINY, f"train.out='{out}'", "train.steps=3"]), **QUIET).fit()
    return out


def test_controlnet_trains_on_a_frozen_base_and_samples_with_a_hint(base_run, tmp_path):
    cfg = load_config(
        None,
        [
            *TINY,
            f"train.out='{tmp_path}'",
            "train.steps=4",
            "objective.name='controlnet'",
            f"objective.depends={{base='{base_run}'}}",
            "objective.args={hint='edges'}",
        ],
    )
    tr = Trainer(cfg, **QUIET)
    base_before = {k: v.clone() for k, v in tr.objective.base.state_dict().items()}
    zero_before = tr.net.mid_zero.weight.clone()
    tr.fit()
    assert all(torch.equal(v, tr.objective.base.state_dict()[k]) for k, v in base_before.items())  # frozen
    assert not torch.equal(zero_before, tr.net.mid_zero.weight)  # the zero convolutions learned
    state = json.loads(next((tmp_path / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["objective"] == "controlnet" and state["network"] == "controlnet"
    assert state["depends"]["base"]["sha256"]  # the base is recorded by checksum
    model = load_run(tmp_path)
    from difflab.data import digits

    x, _ = digits(limit=4)
    h = hints.edges(x)
    a = model.generate(4, seed=0, hint=h, label=3)
    b = model.generate(4, seed=0, label=3)  # no hint: the base alone
    base = load_run(base_run).generate(4, seed=0, label=3)
    assert a.shape == (4, 1, 8, 8) and torch.equal(b, base) and not torch.equal(a, b)
    g = model.generate(4, seed=0, hint=h[:1], label=3, guidance=2.0)  # one hint for all, kept in both branches
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="hints of shape"):
        model.generate(2, hint=torch.zeros(1, 1, 16, 16))
    # the command line: difflab sample RUN --control hint.png
    import numpy as np

    from difflab.cli import main

    png = _png(tmp_path / "hint.png", (h[0, 0].numpy() * 255).astype(np.uint8))
    out = tmp_path / "c.npz"
    assert main(["sample", str(tmp_path), "--control", png, "--n", "4", "--label", "3", "--out", str(out)]) == 0
    assert np.allclose(
        np.load(out)["samples"], (model.generate(4, seed=0, hint=h[:1], label=3).clamp(-1, 1) + 1) / 2, atol=1e-5
    )
    big = _png(tmp_path / "big.png", np.zeros((16, 16), dtype=np.uint8))
    assert main(["sample", str(tmp_path), "--control", big]) == 2  # wrong size: a clear error


def test_controlnet_needs_a_base_run(tmp_path):
    cfg = load_config(None, [*TINY, f"train.out='{tmp_path}'", "objective.name='controlnet'"])
    with pytest.raises(ConfigError, match="objective.depends.base"):
        Trainer(cfg, **QUIET)


def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)
    return str(path)


def test_cli_edit_and_control(base_run, tmp_path):
    import numpy as np

    from difflab.cli import main

    img = np.zeros((8, 8), dtype=np.uint8)
    img[2:6, 2:6] = 200
    image = _png(tmp_path / "in.png", img)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 255
    m = _png(tmp_path / "mask.png", mask)
    out = tmp_path / "out.npz"
    assert (
        main(["edit", str(base_run), "--image", image, "--mask", m, "--out", str(out), "--n", "2", "--label", "1"]) == 0
    )
    x = np.load(out)["samples"]
    assert x.shape == (2, 1, 8, 8) and np.allclose(x[:, 0, :, :4], img[None, :, :4] / 255.0, atol=1e-6)  # kept
    assert main(["edit", str(base_run), "--image", image, "--strength", "0", "--out", str(out)]) == 0
    assert np.allclose(np.load(out)["samples"][0, 0], img / 255.0, atol=1e-6)  # strength 0: the input
    assert main(["edit", str(base_run), "--image", image, "--strength", "0.5", "--out", str(tmp_path / "o.png")]) == 0
    grey = mask.copy()
    grey[0, 0] = 128
    assert main(["edit", str(base_run), "--image", image, "--mask", _png(tmp_path / "g.png", grey)]) == 2
    assert main(["edit", str(base_run), "--image", image, "--strength", "1.5"]) == 2
    big = _png(tmp_path / "big.png", np.zeros((16, 16), dtype=np.uint8))
    assert main(["edit", str(base_run), "--image", big, "--strength", "0.5"]) == 2
    assert main(["sample", str(base_run), "--control", image]) == 2  # not a ControlNet run
    assert main(["sample", str(base_run), "--crop", "0,0"]) == 2  # not micro-conditioned


def test_refiner_trains_only_on_low_noise_and_hands_over(base_run, tmp_path):
    from difflab.losses import sample_times
    from difflab.schedules import DiscreteVP

    t = sample_times("uniform", DiscreteVP.ddpm_linear(), 4000, torch.Generator().manual_seed(0), t_hi=0.2)
    assert float(t.max()) <= 0.2 and float(t.min()) >= 1e-3 and float(t.max()) > 0.19
    cfg = load_config(None, [*TINY, f"train.out='{tmp_path}'", "train.steps=2", "objective.name='refiner'"])
    tr = Trainer(cfg, **QUIET)
    assert tr.objective.loss_fn.t_max == 0.2
    tr.fit()
    base = load_run(base_run)
    ref = load_run(tmp_path)
    x = base.generate(3, seed=0, label=1, refiner=str(tmp_path), switch=0.5)  # the last of 3 steps (t = 1/3)
    same = base.generate(3, seed=0, label=1, refiner=base, switch=0.5)  # itself as refiner: unchanged
    assert torch.equal(same, base.generate(3, seed=0, label=1)) and not torch.equal(x, same)
    other = load_config(
        None, [*TINY, f"train.out='{tmp_path / 'cos'}'", "train.steps=1", "schedule.name='ddpm_cosine'"]
    )
    Trainer(other, **QUIET).fit()
    with pytest.raises(ValueError, match="refiner was trained on the schedule"):
        base.generate(2, refiner=str(tmp_path / "cos"))
    from difflab.cli import main

    out = tmp_path / "r.npz"
    assert main(["sample", str(base_run), "--refiner", str(tmp_path), "--switch", "0.5", "--n", "3", "--label", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    assert main(["sample", str(base_run), "--refiner", str(tmp_path / "cos"), "--n", "2"]) == 2
    assert ref.kind == "diffusion"


def test_micro_conditioning_objective_records_the_crops(tmp_path):
    from difflab.train.objectives.micro import rescale_and_crop

    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 2:6, 2:6] = 1
    y, vals = rescale_and_crop(x, 4, 12, torch.Generator().manual_seed(0))
    o, top, left = vals[:, 0], vals[:, 2], vals[:, 3]
    assert ((o >= 4) & (o <= 12)).all() and (top <= (o - 8).clamp_min(0)).all() and (left <= (o - 8).clamp_min(0)).all()
    assert torch.equal(y[o == 8], x[o == 8])  # an original of the native size is the image itself
    assert ((top[o < 8] == 0) & (left[o < 8] == 0)).all() and (vals[:, 4:] == 8).all()
    mc = [
        "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, head_channels=8, groups=4, micro_conditioning=true}"
    ]
    cfg = load_config(
        None,
        [
            *TINY,
            *mc,
            f"train.out='{tmp_path}'",
            "train.steps=2",
            "objective.name='micro'",
            "objective.args={min_size=4, max_size=12}",
        ],
    )
    Trainer(cfg, **QUIET).fit()
    m = load_run(tmp_path)
    a, b = m.generate(2, seed=0), m.generate(2, seed=0, crop=(0, 0), orig_size=(8, 8))
    assert torch.equal(a, b) and not torch.equal(a, m.generate(2, seed=0, crop=(3, 3), orig_size=(12, 12)))
    bad = load_config(None, [*TINY, f"train.out='{tmp_path / 'b'}'", "objective.name='micro'"])
    with pytest.raises(ConfigError, match="micro_conditioning"):
        Trainer(bad, **QUIET)


def test_retrieval_objective_excludes_the_query_and_swaps_databases(tmp_path):
    from difflab.retrieval import RetrievalDatabase

    net = [
        "model.args={channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[4], head_channels=8, groups=4, context_dim=128}"
    ]
    cfg = load_config(
        None,
        [
            *TINY,
            *net,
            f"train.out='{tmp_path}'",
            "train.steps=2",
            "objective.name='retrieval'",
            "objective.args={feature='digits', k=3, index='exact'}",
        ],
    )
    tr = Trainer(cfg, **QUIET)
    nb = tr.dataset["neighbours"]
    assert nb.shape == (64, 3) and not (nb == torch.arange(64)[:, None]).any()
    tr.fit()
    assert (tmp_path / "retrieval" / "index.faiss").is_file()
    m = load_run(tmp_path)
    a = m.generate(3, seed=0)
    db = RetrievalDatabase.load(tmp_path / "retrieval")
    one = db.subset(db.labels == int(db.labels[0]))
    b = m.generate(3, seed=0, database=one)
    assert a.shape == b.shape == (3, 1, 8, 8) and not torch.equal(a, b)
    wrong = RetrievalDatabase(db.embeddings, "fashion_mnist", index="brute")
    with pytest.raises(ValueError, match="built with the feature network 'fashion_mnist'"):
        m.generate(2, database=wrong)
