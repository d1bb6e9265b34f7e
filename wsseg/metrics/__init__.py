"""Evaluation: confusion-matrix mIoU, GT-label filtering, evaluation helpers."""

__all__: list[str] = []
