"""Backbones returning feature maps and attention logits (timm ViTs, MiT/SegFormer)."""

__all__: list[str] = []
