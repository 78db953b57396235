"""One entry point for sample-quality metrics: samples + real data + metric names -> dict."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor, nn

from difflab.metrics.features import FeatureNet
from difflab.metrics.features import feature_net as make_feature_net
from difflab.metrics.fid import fid
from difflab.metrics.mmd import kid, mmd2
from difflab.metrics.precision_recall import precision_recall
from difflab.metrics.sliced import sliced_wasserstein

__all__ = ["METRICS", "evaluate"]

#: metric name -> the keys it adds to the report
METRICS: dict[str, tuple[str, ...]] = {
    "fid": ("fid",),
    "kid": ("kid", "kid_std"),
    "pr": ("precision", "recall"),
    "accuracy": ("accuracy",),
    "swd": ("swd",),
    "mmd": ("mmd2",),
}
_FEATURE_METRICS = ("fid", "kid", "pr")


def _names(metrics: Sequence[str] | str) -> list[str]:
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, bad))}; valid: {', '.join(METRICS)}")
    if not names:
        raise ValueError("no metrics asked for")
    return names


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).double()


def evaluate(
    samples: Tensor,
    real: Tensor | None = None,
    metrics: Sequence[str] | str = ("fid", "kid", "pr"),
    *,
    feature_net: str | FeatureNet | nn.Module | Callable[[Tensor], Tensor] | None = None,
    labels: Tensor | None = None,
    real_features: Tensor | None = None,
    adapt: str | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    swd_projections: int = 512,
    mmd_bandwidth: float | None = None,
    seed: int = 0,
    batch_size: int = 500,
    weights_dir: str | Path | None = None,
) -> dict[str, float]:
    """Measure ``samples`` against ``real`` data.

    Args:
        samples: generated data: images (N, C, H, W) in [-1, 1], or points (N, d).
        real: reference data of the same kind (not needed for ``accuracy`` alone, nor
            for the feature metrics when ``real_features`` is given).
        metrics: names or a comma-separated string, from
            ``fid`` (Heusel et al. 2017), ``kid`` (Binkowski et al. 2018; adds ``kid_std``),
            ``pr`` (precision and recall, Kynkaanniemi et al. 2019) -- all three in the
            feature network's space --, ``accuracy`` (the feature network, a classifier,
            against ``labels``), and for low-dimensional data on the raw coordinates
            ``swd`` (sliced 2-Wasserstein) and ``mmd`` (unbiased RBF MMD^2).
        feature_net: a shipped name (``digits``, ``fashion_mnist``), a :class:`FeatureNet`,
            a module with ``features`` or a callable ``x -> (B, D)``; required by
            fid/kid/pr/accuracy.
        labels: the class each sample was conditioned on (for ``accuracy``).
        real_features: precomputed features of the real data (skips ``real``).
        adapt: images of another size than the feature network's: ``None`` raises,
            ``"center_crop"`` or ``"resize"``.

    Returns:
        A flat dict: the keys of :data:`METRICS` for the names asked, plus ``n_samples``
        and ``n_real``.
    """
    names = _names(metrics)
    needs_net = any(m in _FEATURE_METRICS or m == "accuracy" for m in names)
    if needs_net and feature_net is None:
        raise ValueError(
            f"metrics {', '.join(m for m in names if m in (*_FEATURE_METRICS, 'accuracy'))} need a feature_net"
        )
    needs_real = any(m in ("swd", "mmd") for m in names) or (
        any(m in _FEATURE_METRICS for m in names) and real_features is None
    )
    if needs_real and real is None:
        raise ValueError(f"metrics {', '.join(names)} need real data (real=...)")
    out: dict[str, float] = {"n_samples": float(samples.shape[0])}
    if real is not None:
        out["n_real"] = float(real.shape[0])
    net = make_feature_net(feature_net, adapt, batch_size, weights_dir) if needs_net else None
    if net is not None and any(m in _FEATURE_METRICS for m in names):
        fs = net.features(samples)
        fr = real_features if real_features is not None else net.features(real)
        if "fid" in names:
            out["fid"] = fid(fr, fs)
        if "kid" in names:
            out["kid"], out["kid_std"] = kid(fr, fs, kid_subsets, kid_subset_size, generator=seed)
        if "pr" in names:
            out["precision"], out["recall"] = precision_recall(fr, fs, pr_k)
    if "accuracy" in names:
        if labels is None:
            raise ValueError("metric 'accuracy' needs the labels the samples were conditioned on (labels=...)")
        from difflab.metrics.accuracy import classifier_accuracy

        out["accuracy"] = classifier_accuracy(samples, labels, net)
    if "swd" in names:
        out["swd"] = sliced_wasserstein(_flat(samples), _flat(real), swd_projections, generator=seed)
    if "mmd" in names:
        out["mmd2"] = mmd2(_flat(samples), _flat(real), mmd_bandwidth)
    return out
