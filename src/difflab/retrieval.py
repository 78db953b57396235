"""Retrieval-augmented diffusion (Blattmann et al. 2022, "Retrieval-Augmented Diffusion Models"):
nearest-neighbour databases of feature embeddings, used as cross-attention context.

A :class:`RetrievalDatabase` holds the L2-normalised feature embeddings of a set of images made
by one feature network (a shipped classifier of :mod:`difflab.metrics.features`, by default
``fashion_mnist``), and a nearest-neighbour index over them by cosine similarity (the inner
product of normalised vectors): faiss's HNSW graph (Malkov & Yashunin 2018) by default, faiss's
exact inner-product index on request, and a brute-force matrix product only when faiss is not
installed (``pip install difflab[retrieval]``).

RDM conditions the denoiser on the embeddings of the k nearest neighbours of the training
image, the image itself excluded (Sec. 3.1, eq. 3: p(x | M_D^k(x)), the query not in its own
neighbour set), fed to a U-Net's cross-attention as a (B, k, D) context.  At sampling time the
database is a free choice (Sec. 4.2): the neighbourhood of a random database entry, or any other
database made by the same feature network -- e.g. one class only, which steers the samples to it
without retraining.  A database records its feature network by name and weight checksum, and a
model refuses a database made by another.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["FORMAT", "INDEXES", "RetrievalDatabase", "feature_checksum"]

FORMAT = "difflab-retrieval-database"
INDEXES = ("hnsw", "exact", "brute")


def _faiss() -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def feature_checksum(feature: str) -> str | None:
    """SHA-256 (16 hex digits) of a shipped feature network's weights; None for other networks."""
    from difflab.metrics.features import SHIPPED

    if feature not in SHIPPED:
        return None
    path = Path(str(resources.files("difflab") / "weights")) / f"{feature}_classifier.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _normalise(x: Tensor) -> Tensor:
    x = x.detach().float().cpu()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class RetrievalDatabase:
    """Normalised embeddings (N, D) of images from one feature network, and an index over them.

    Args:
        embeddings: (N, D) features (normalised here).
        feature: the feature network's name (a shipped one, or any name for a custom network).
        labels: optional (N,) class labels of the images (for :meth:`subset` by class).
        index: ``hnsw`` (faiss HNSW, the default), ``exact`` (faiss flat inner product) or
            ``brute`` (a torch matrix product; also what ``hnsw`` / ``exact`` fall back to, with a
            warning, when faiss is not installed).
        checksum: the feature network's weight checksum (default: :func:`feature_checksum`).
    """

    def __init__(
        self,
        embeddings: Tensor,
        feature: str,
        labels: Tensor | None = None,
        index: str = "hnsw",
        checksum: str | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> None:
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.shape[0] < 1:
            got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must be a non-empty (N, D) tensor, got {got}")
        if index not in INDEXES:
            raise ValueError(f"unknown index {index!r}; valid: {', '.join(INDEXES)}")
        self.embeddings = _normalise(embeddings)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).flatten()
        if self.labels is not None and self.labels.shape[0] != len(self):
            raise ValueError(f"need one label per embedding ({len(self)}), got {self.labels.shape[0]}")
        self.feature = feature
        self.checksum = feature_checksum(feature) if checksum is None else checksum
        self.hnsw_m, self.ef_search = hnsw_m, ef_search
        self.index_kind = index
        self._index = None
        if index != "brute":
            faiss = _faiss()
            if faiss is None:
                warnings.warn("faiss is not installed (pip install faiss-cpu): brute-force search", stacklevel=2)
                self.index_kind = "brute"
            else:
                self._index = self._build_index(faiss)

    def _build_index(self, faiss: Any) -> Any:
        d = self.dim
        if self.index_kind == "hnsw":
            idx = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = 2 * self.ef_search
            idx.hnsw.efSearch = self.ef_search
        else:
            idx = faiss.IndexFlatIP(d)
        idx.add(np.ascontiguousarray(self.embeddings.numpy(), dtype=np.float32))
        return idx

    # --- construction -------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def build(
        cls,
        images: Tensor,
        feature: str = "fashion_mnist",
        labels: Tensor | None = None,
        index: str = "hnsw",
        batch_size: int = 500,
        **kw: Any,
    ) -> RetrievalDatabase:
        """Embed ``images`` (N, C, H, W) in [-1, 1] with the shipped feature network ``feature``."""
        from difflab.metrics.features import feature_net

        net = feature_net(feature, batch_size=batch_size)
        return cls(net.features(images).float(), feature, labels, index, **kw)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def subset(self, keep: Tensor) -> RetrievalDatabase:
        """A database of the entries ``keep`` (a bool mask or indices), e.g. ``db.subset(db.labels == 7)``."""
        keep = torch.as_tensor(keep)
        idx = keep.nonzero().flatten() if keep.dtype == torch.bool else keep.long().flatten()
        if idx.numel() == 0:
            raise ValueError("the subset is empty")
        labels = None if self.labels is None else self.labels[idx]
        return RetrievalDatabase(
            self.embeddings[idx], self.feature, labels, self.index_kind, self.checksum, self.hnsw_m, self.ef_search
        )

    # --- checks -----------------------------------------------------------------------------
    def check(self, feature: str, checksum: str | None = None, dim: int | None = None) -> None:
        """Raise a ValueError unless this database was made by the feature network ``feature``
        (with weights of ``checksum``, when given) and has embeddings of ``dim``."""
        if feature != self.feature or (
            checksum is not None and self.checksum is not None and checksum != self.checksum
        ):
            raise ValueError(
                f"this retrieval database was built with the feature network {self.feature!r} "
                f"(weights {self.checksum}), the model was trained with {feature!r} (weights {checksum}); "
                f"build a database with feature={feature!r}"
            )
        if dim is not None and dim != self.dim:
            raise ValueError(f"the database holds {self.dim}-d embeddings, the model takes {dim}-d context")

    # --- search -------------------------------------------------------------------------------
    def search(self, queries: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(ids (B, k), cosine similarities (B, k)) of the k nearest entries of each query
        (B, D), best first; ``exclude`` (B,) database ids (-1: none) never appear in their row
        (the query image itself, at training)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        extra = 0 if exclude is None else 1
        if k + extra > len(self):
            raise ValueError(
                f"cannot retrieve {k} neighbours{' besides the query' if extra else ''} from {len(self)} entries"
            )
        q = _normalise(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have {q.shape[1]} features, the database {self.dim}")
        kk = k + extra
        if self._index is not None:
            sims, ids = self._index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), kk)
            ids, sims = torch.from_numpy(ids).long(), torch.from_numpy(sims).float()
        else:
            sims, ids = (q @ self.embeddings.T).topk(kk, dim=1)
        if ids.min() < 0:  # HNSW may return fewer than kk (-1 padding) on tiny databases: fill by brute force
            bad = (ids < 0).any(1)
            s2, i2 = (q[bad] @ self.embeddings.T).topk(kk, dim=1)
            ids[bad], sims[bad] = i2, s2
        if exclude is None:
            return ids, sims
        exclude = torch.as_tensor(exclude, dtype=torch.long).flatten()
        hit = ids == exclude[:, None]
        # drop the excluded id where it was found, else the last (k + 1-th) neighbour
        drop = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(exclude, kk - 1))
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[torch.arange(ids.shape[0]), drop] = False
        return ids[keep].reshape(-1, k), sims[keep].reshape(-1, k)

    def context(self, queries: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
        """The RDM context: embeddings (B, k, D) of each query's k nearest neighbours."""
        ids, _ = self.search(queries, k, exclude)
        return self.embeddings[ids]

    def random_context(self, n: int, k: int, seed: int = 0) -> Tensor:
        """Context for unconditional sampling (Blattmann et al. 2022, Sec. 4.2): the k nearest
        neighbours of n database entries drawn at random (each query counts among its own)."""
        g = torch.Generator().manual_seed(seed)
        q = torch.randint(0, len(self), (n,), generator=g)
        return self.context(self.embeddings[q], k)

    # --- files ----------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``embeddings.safetensors``, ``database.json`` and (with faiss) ``index.faiss``;
        each file is written to a temporary name and renamed."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": self.embeddings.contiguous()}
        if self.labels is not None:
            tensors["labels"] = self.labels.contiguous()
        tmp = d / ".embeddings.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, d / "embeddings.safetensors")
        if self._index is not None:
            faiss = _faiss()
            faiss.write_index(self._index, str(d / ".index.faiss.tmp"))
            os.replace(d / ".index.faiss.tmp", d / "index.faiss")
        meta = {
            "format": FORMAT,
            "feature": self.feature,
            "feature_checksum": self.checksum,
            "n": len(self),
            "dim": self.dim,
            "index": self.index_kind,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
        }
        (d / ".database.json.tmp").write_text(json.dumps(meta, indent=1))
        os.replace(d / ".database.json.tmp", d / "database.json")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RetrievalDatabase:
        """Read a database written by :meth:`save` (the saved index when faiss can read it)."""
        d = Path(directory)
        mp = d / "database.json"
        if not mp.is_file():
            raise FileNotFoundError(f"{d} is not a retrieval database (no database.json)")
        meta = json.loads(mp.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{mp} is not a difflab retrieval database (format {meta.get('format')!r})")
        t = load_file(str(d / "embeddings.safetensors"))
        if t["embeddings"].shape != (meta["n"], meta["dim"]):
            raise ValueError(
                f"{d}: embeddings of shape {tuple(t['embeddings'].shape)}, database.json says {meta['n']} x {meta['dim']}"
            )
        db = cls.__new__(cls)
        db.embeddings, db.labels = t["embeddings"], t.get("labels")
        db.feature, db.checksum = meta["feature"], meta["feature_checksum"]
        db.hnsw_m, db.ef_search, db.index_kind = meta["hnsw_m"], meta["ef_search"], meta["index"]
        db._index = None
        faiss = _faiss() if db.index_kind != "brute" else None
        if faiss is not None and (d / "index.faiss").is_file():
            db._index = faiss.read_index(str(d / "index.faiss"))
            if db._index.ntotal != meta["n"]:
                raise ValueError(f"{d}/index.faiss holds {db._index.ntotal} vectors, the database {meta['n']}")
            if db.index_kind == "hnsw":
                db._index.hnsw.efSearch = db.ef_search
        elif faiss is not None:
            db._index = db._build_index(faiss)
        elif db.index_kind != "brute":
            warnings.warn("faiss is not installed (pip install faiss-cpu): brute-force search", stacklevel=2)
            db.index_kind = "brute"
        return db

    def __repr__(self) -> str:
        return f"RetrievalDatabase({len(self)} x {self.dim}, feature={self.feature!r}, index={self.index_kind!r})"
