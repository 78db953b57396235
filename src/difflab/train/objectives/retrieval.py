"""Retrieval-augmented diffusion training (Blattmann et al. 2022, Sec. 3.1): the denoiser is
conditioned through cross-attention on the feature embeddings of the k nearest neighbours of
its training image in a database of the training set, the image itself excluded (eq. 3).

``dataset()`` embeds the training images with the shipped feature network ``feature``
(``[objective.args]``, default ``fashion_mnist``), builds a :class:`~difflab.retrieval.RetrievalDatabase`
(faiss HNSW), saves it beside the run (``<train.out>/retrieval``) and looks up every image's
neighbours once.  The U-Net needs ``model.args.context_dim`` = the feature dimension (128).
``context_dropout`` replaces the context by zeros (the null context of classifier-free guidance).

Sampling (:class:`RetrievalModel`): the context of each sample is the neighbourhood of a random
entry of a database -- the run's own, or any other made by the same feature network
(``database=`` a directory or a RetrievalDatabase: e.g. one class only), without retraining.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from difflab.retrieval import RetrievalDatabase
from difflab.train.config import Config, ConfigError
from difflab.train.models import DiffusionModel
from difflab.train.objectives.base import Batch, DataSpec, Dependencies, register
from difflab.train.objectives.denoising import Denoising

__all__ = ["RetrievalConditioned", "RetrievalModel"]


class RetrievalModel(DiffusionModel):
    """A diffusion model conditioned on retrieved neighbours (module docstring)."""

    kind = "retrieval diffusion"
    options: ClassVar[dict[str, str]] = {
        **DiffusionModel.options,
        "database": "retrieval database (directory or RetrievalDatabase) to draw neighbourhoods from (default: the run's)",
    }

    def __init__(self, *args: Any, feature: str, checksum: str | None, k: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.feature, self.checksum, self.k = feature, checksum, k

    def database(self, database: str | os.PathLike | RetrievalDatabase | None = None) -> RetrievalDatabase:
        if database is None:
            if self.path is None:
                raise ValueError("this model was not loaded from a run: pass database=")
            database = Path(self.path).parent.parent / "retrieval"
        db = database if isinstance(database, RetrievalDatabase) else RetrievalDatabase.load(database)
        db.check(self.feature, self.checksum, self.net.config.get("context_dim"))
        return db

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0, *, database: Any = None, context: Tensor | None = None, **kw: Any) -> Any:
        if context is None:
            context = self.database(database).random_context(n, self.k, seed)
        return super().generate(n, seed, context=context, **kw)


@register
class RetrievalConditioned(Denoising):
    """Denoising conditioned on the k nearest neighbours of each training image (module docstring)."""

    name = "retrieval"

    @dataclass
    class Args:
        feature: str = "fashion_mnist"
        k: int = 4
        index: str = "hnsw"
        context_dropout: float = 0.1

    def __init__(
        self,
        cfg: Config,
        spec: DataSpec,
        deps: Dependencies,
        primary: nn.Module | None = None,
        for_training: bool = True,
    ) -> None:
        super().__init__(cfg, spec, deps, primary, for_training)
        from difflab.retrieval import feature_checksum

        a = self.args
        if a.k < 1 or not 0 <= a.context_dropout < 1:
            raise ConfigError(
                f"objective.args needs k >= 1 and 0 <= context_dropout < 1, got {a.k}, {a.context_dropout}"
            )
        cdim = getattr(self.net, "config", {}).get("context_dim")
        if not cdim:
            raise ConfigError(
                "objective 'retrieval' needs a U-Net with cross-attention: set model.args.context_dim (128)"
            )
        self.checksum = feature_checksum(a.feature)
        self.db: RetrievalDatabase | None = None

    def dataset(self, data: Batch) -> Batch:
        a = self.args
        db = RetrievalDatabase.build(data["x"], a.feature, data.get("y"), index=a.index)
        if db.dim != self.net.config["context_dim"]:
            raise ConfigError(
                f"model.args.context_dim = {self.net.config['context_dim']}, the feature network gives {db.dim}"
            )
        db.save(Path(self.cfg.train.out) / "retrieval")
        n = len(db)
        ids = torch.cat([db.search(db.embeddings[i : i + 4096], a.k, exclude=torch.arange(i, min(i + 4096, n)))[0]
                         for i in range(0, n, 4096)])  # fmt: skip
        self.db = db
        return {**data, "neighbours": ids}

    def loss(self, group: str, batch: Batch, gen: torch.Generator, step: int) -> dict[str, Tensor]:
        x = batch["x"]
        cond = self.conditioning(batch.get("y"), gen, x.device)
        ctx = self.db.embeddings[batch["neighbours"].cpu()].to(x.device)
        drop = torch.rand(x.shape[0], generator=gen) < self.args.context_dropout
        cond["context"] = torch.where(drop[:, None, None].to(x.device), torch.zeros_like(ctx), ctx)
        return {"loss": self.loss_fn(self._train_den(), x, gen, **cond)}

    def model(self, net: nn.Module) -> RetrievalModel:
        return RetrievalModel(net, self.schedule, self.cfg, shape=self.spec.shape, feature=self.args.feature,
                              checksum=self.checksum, k=self.args.k)  # fmt: skip
