"""Tensor-transforming modules: CAM fusion, refiners (PAR, PAMR, VARM), affinity heads, inference fusion."""

__all__: list[str] = []
