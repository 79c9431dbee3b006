"""Scoring: classification metrics (more — OOD scores, instruction-following harnesses — join in later parts)."""

from .metrics import accuracy, predict

__all__ = ["accuracy", "predict"]
