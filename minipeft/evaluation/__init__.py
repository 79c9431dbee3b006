"""Scoring: classification metrics and out-of-distribution detection (instruction-following harnesses join later)."""

from .metrics import accuracy, predict
from .ood import KNN, Cosine, Mahalanobis, aupr, auroc, energy, fpr95, msp, ood_metrics

__all__ = ["Cosine", "KNN", "Mahalanobis", "accuracy", "aupr", "auroc", "energy", "fpr95", "msp", "ood_metrics", "predict"]
