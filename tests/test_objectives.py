"""The objective protocol under the one Trainer: several parameter groups with their own
optimizers, owned and frozen modules, extra state, dependencies recorded by checksum, exact
resume, and runs rebuilt by ``load_run`` whatever objective made them."""

import csv
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from difflab.train import (
    CheckpointError,
    ConfigError,
    DiffusionModel,
    Model,
    Trainer,
    load_config,
    load_run,
    objectives,
)
from difflab.train.objectives import Group, Objective, register
from difflab.train.runs import load_objective

QUIET = dict(progress=False, log=lambda s: None)
TOY = [
    "data.name='toy2d'",
    "data.n=64",
    "model.network='mlp'",
    "model.args={width=16, depth=1}",
    "train.batch_size=16",
    "train.warmup=2",
    "train.log_every=1",
    "train.sample_every=0",
    "train.ckpt_every=3",
    "train.threads=1",
    "sample.solver='ddim'",
    "sample.steps=3",
    "sample.n=4",
]


class MeanModel(Model):
    """Generates the learned mean (a point mass): enough to check that runs load as models."""

    kind = "mean"
    options: ClassVar[dict[str, str]] = {"shift": "added to every sample"}

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def generate(self, n, seed=0, *, batch_size=256, progress=False, callback=None, shift=0.0):
        return self.net.mu.detach().expand(n, -1) + shift


class MuNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(2))


@dataclass
class PairArgs:
    aux_lr: float = 0.05


@register
class TwoGroups(Objective):
    """Two groups fit the data mean by squared error: ``net`` (the primary, train.lr) and ``aux``
    (its own lr); a step counter is extra state; an owned buffer module is saved in ``modules``;
    a teacher run, when given, is frozen and read but never saved."""

    name = "test_two_groups"
    Args = PairArgs

    def __init__(self, cfg, spec, deps, primary=None, for_training=True):
        super().__init__(cfg, spec, deps, primary, for_training)
        self.net = self.given_primary(MuNet)
        self.aux = MuNet()
        self.counter = torch.zeros((), dtype=torch.long)
        if for_training and "teacher" in deps:
            self.freeze("teacher", deps.load("teacher").net)

    def groups(self):
        return {
            "net": Group(list(self.net.parameters())),
            "aux": Group(list(self.aux.parameters()), lr=self.args.aux_lr),
        }

    def loss(self, group, batch, gen, step):
        x = batch["x"]
        mu = self.net.mu if group == "net" else self.aux.mu
        noise = torch.randn(x.shape, generator=gen) * 0.01  # uses the trainer's generator
        loss = ((x + noise - mu) ** 2).sum(1).mean()
        out = {"loss": loss}
        if "teacher" in self.frozen:
            out["teacher_out"] = self.frozen["teacher"](x, torch.full((x.shape[0],), 0.5)).pow(2).mean()
        return out

    def after_step(self, step):
        self.counter += 1
        return {"counter": float(self.counter)}

    def extra_state(self):
        return {"counter": self.counter.clone()}

    def load_extra_state(self, tensors):
        if "counter" in tensors:
            self.counter = tensors["counter"].clone()

    def model(self, net):
        return MeanModel(net)


def _cfg(tmp_path, *more):
    return load_config(None, [*TOY, f"train.out='{tmp_path}'", "objective.name='test_two_groups'", *more])


def _state(tr):
    return {k: v.clone() for k, v in tr.objective.state_dict().items()} | {
        f"opt.{g}.{i}.{k}": v.clone()
        for g, o in tr.opts.items()
        for i, s in o.state_dict()["state"].items()
        for k, v in s.items()
    }


def test_registry_and_config_errors(tmp_path):
    assert {"denoising", "test_two_groups"} <= set(objectives.names())
    with pytest.raises(ConfigError, match=r"objective.name = 'nope' is not one of .*denoising"):
        Trainer(load_config(None, [*TOY, f"train.out='{tmp_path}'", "objective.name='nope'"]), **QUIET)
    with pytest.raises(ConfigError, match=r"objective 'denoising' takes no options"):
        Trainer(load_config(None, [*TOY, f"train.out='{tmp_path}'", "objective.args={x=1}"]), **QUIET)
    with pytest.raises(ConfigError, match=r"unknown key objective.args.aux_rl \(did you mean 'aux_lr'\?\)"):
        Trainer(_cfg(tmp_path, "objective.args={aux_rl=1.0}"), **QUIET)
    with pytest.raises(ConfigError, match=r"objective.depends.teacher = 3 should be a run directory"):
        Trainer(_cfg(tmp_path, "objective.depends={teacher=3}"), **QUIET)


def test_two_groups_optimize_separately_and_resume_exactly(tmp_path):
    a = Trainer(_cfg(tmp_path / "a", "train.steps=6"), **QUIET)
    assert [g["lr"] for o in a.opts.values() for g in o.param_groups] == [2e-4, 0.05]
    a.fit()
    # each group's optimizer moved only its own parameters, at its own rate
    mean = a.dataset["x"].mean(0)
    assert a.objective.aux.mu.norm() > 5 * a.objective.net.mu.norm() > 0
    assert (a.objective.aux.mu - mean).norm() < mean.norm()
    b = Trainer(_cfg(tmp_path / "b", "train.steps=3"), **QUIET)
    b.fit()
    torch.manual_seed(999)
    b = Trainer(_cfg(tmp_path / "b", "train.steps=6"), **QUIET)
    b.fit()
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), "resume is not exact"
    assert int(b.objective.counter) == 6  # extra state survived the resume
    files = {p.name for p in (tmp_path / "b" / "checkpoints" / "step_0000006").iterdir()}
    assert {"modules.safetensors", "optimizer_aux.safetensors", "extra.safetensors", "optimizer.safetensors"} <= files
    with open(tmp_path / "b" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"net/loss", "aux/loss", "aux/lr", "counter"} <= set(rows[0])


def test_runs_load_as_their_objectives_model(tmp_path):
    tr = Trainer(_cfg(tmp_path, "train.steps=3"), **QUIET)
    tr.fit()
    m = load_run(tmp_path)
    assert isinstance(m, MeanModel) and m.state["objective"] == "test_two_groups"
    torch.testing.assert_close(m.generate(3, shift=1.0), tr.ema.net.mu.detach().expand(3, -1) + 1.0)
    with pytest.raises(ValueError, match=r"a mean model takes no option 'solver'; its options: shift"):
        m.check_options({"solver": "ddim"})
    obj, _ = load_objective(tmp_path, use_ema=False)
    assert torch.equal(obj.aux.mu, tr.objective.aux.mu) and int(obj.counter) == 3


def test_dependencies_are_frozen_recorded_and_checked(tmp_path):
    teacher = tmp_path / "teacher"
    Trainer(load_config(None, [*TOY, f"train.out='{teacher}'", "train.steps=2"]), **QUIET).fit()
    student = tmp_path / "student"
    tr = Trainer(_cfg(student, "train.steps=2", f"objective.depends={{teacher='{teacher}'}}"), **QUIET)
    frozen = tr.objective.frozen["teacher"]
    assert not any(p.requires_grad for p in frozen.parameters())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    tr.fit()
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())  # read, never trained
    state = json.loads((student / "checkpoints" / "step_0000002" / "state.json").read_text())
    rec = state["depends"]["teacher"]
    assert rec["path"] == str(teacher) and rec["checkpoint"].endswith("step_0000002") and len(rec["sha256"]) == 64
    from safetensors.torch import load_file

    saved = load_file(str(student / "checkpoints" / "step_0000002" / "modules.safetensors"))
    assert set(saved) == {"aux.mu"}  # the frozen teacher is not part of the student's checkpoint
    dep = tr.deps
    # a recorded dependency that changed or is gone is refused, naming it
    from difflab.train.objectives import Dependencies

    changed = Dependencies(recorded={"teacher": {**rec, "sha256": "0" * 64}})
    with pytest.raises(CheckpointError, match=r"teacher checkpoint .*step_0000002 has changed"):
        changed.checkpoint("teacher")
    gone = Dependencies(recorded={"teacher": {**rec, "checkpoint": str(tmp_path / "gone")}})
    with pytest.raises(CheckpointError, match=r"depends on the teacher checkpoint .*gone.*which is gone"):
        gone.load("teacher")
    assert dep.checkpoint("teacher").name == "step_0000002"
    with pytest.raises(CheckpointError, match=r"objective.depends.teacher = .*nowhere.*no such run"):
        Trainer(_cfg(tmp_path / "x", f"objective.depends={{teacher='{tmp_path}/nowhere'}}"), **QUIET)


def test_checkpoints_from_before_objectives_still_load(tmp_path):
    """Runs written before objectives existed have no objective / data_spec / optimizers keys."""
    Trainer(load_config(None, [*TOY, f"train.out='{tmp_path}'", "train.steps=3"]), **QUIET).fit()
    sf = tmp_path / "checkpoints" / "step_0000003" / "state.json"
    state = json.loads(sf.read_text())
    for k in ("objective", "data_spec", "depends", "optimizers"):
        del state[k]
    del state["config"]["objective"]
    sf.write_text(json.dumps(state))
    m = load_run(tmp_path)
    assert isinstance(m, DiffusionModel) and m.shape == (2,)
    assert m.generate(4, seed=1).shape == (4, 2)
    tr = Trainer(load_config(None, [*TOY, f"train.out='{tmp_path}'", "train.steps=4"]), **QUIET)
    tr.fit()  # resumes the old checkpoint, optimizer included
    assert tr.step == 4


def test_in_memory_data_and_the_analytic_minimum(tmp_path):
    """``Trainer(data=...)`` trains on given tensors; the squared-error objective's minimiser is
    the data mean, which the aux group (lr 0.05) reaches."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 2, generator=g) + torch.tensor([3.0, -2.0])
    tr = Trainer(
        _cfg(tmp_path, "train.steps=300", "train.ckpt_every=0", "train.log_every=100"), data=(x, None), **QUIET
    )
    tr.fit()
    assert torch.equal(tr.data, x)
    assert (tr.objective.aux.mu.detach() - x.mean(0)).abs().max() < 0.1
