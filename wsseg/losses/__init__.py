"""Losses: balanced segmentation CE, affinity loss, dense energy loss, SCD, ..."""

__all__: list[str] = []
