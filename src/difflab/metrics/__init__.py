"""Sample-quality metrics.

- In a feature network's space (:mod:`~difflab.metrics.features`; shipped: ``digits``,
  ``fashion_mnist``): :func:`fid` (Heusel et al. 2017), :func:`kid` (Binkowski et al. 2018),
  :func:`precision_recall` (Kynkaanniemi et al. 2019).
- On raw low-dimensional data: :func:`sliced_wasserstein`, :func:`mmd2`.
- :func:`perceptual_distance`: an LPIPS-form distance between image pairs (Zhang et al. 2018)
  on the shipped feature networks' layers.
- :func:`classifier_accuracy` of class-conditional samples under a shipped classifier.
- :func:`edge_f1`: adherence of samples to an edge-map control (ControlNet).
- :func:`evaluate`: samples + real data + metric names -> dict (what ``difflab eval`` calls).
"""

from difflab.metrics.accuracy import classifier_accuracy, per_class_accuracy
from difflab.metrics.adherence import edge_f1
from difflab.metrics.evaluate import METRICS, evaluate
from difflab.metrics.features import SHIPPED, FeatureNet, feature_net, load_classifier, shipped_info
from difflab.metrics.fid import fid, frechet_distance, gaussian_stats
from difflab.metrics.mmd import kid, mmd2, mmd2_unbiased, polynomial_kernel, rbf_kernel
from difflab.metrics.perceptual import PerceptualDistance, perceptual_distance
from difflab.metrics.precision_recall import precision_recall
from difflab.metrics.sliced import sliced_wasserstein, wasserstein_1d

__all__ = [
    "METRICS",
    "SHIPPED",
    "FeatureNet",
    "PerceptualDistance",
    "classifier_accuracy",
    "edge_f1",
    "evaluate",
    "feature_net",
    "fid",
    "frechet_distance",
    "gaussian_stats",
    "kid",
    "load_classifier",
    "mmd2",
    "mmd2_unbiased",
    "per_class_accuracy",
    "perceptual_distance",
    "polynomial_kernel",
    "precision_recall",
    "rbf_kernel",
    "shipped_info",
    "sliced_wasserstein",
    "wasserstein_1d",
]
