"""Datasets (PASCAL VOC layout, COCO instances JSON, built-in synthetic) and training transforms."""

__all__: list[str] = []
