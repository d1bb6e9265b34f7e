"""CAM → pseudo-label tools: thresholds, dual-threshold builders, affinity labels, dense CRF."""

__all__: list[str] = []
