"""Learning-rate schedules (poly with linear warm-up)."""

from .poly_warmup import PolyWarmupLR, poly_warmup_multiplier
from .warmup_cosine import WarmupCosineLR, warmup_cosine_multiplier

__all__: list[str] = ["PolyWarmupLR", "poly_warmup_multiplier", "WarmupCosineLR", "warmup_cosine_multiplier"]
