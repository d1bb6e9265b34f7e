"""Learning-rate schedules (poly with linear warm-up)."""

__all__: list[str] = []
