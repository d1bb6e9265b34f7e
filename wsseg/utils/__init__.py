"""Small shared utilities: input validation, image de-normalisation, crop boxes."""

from .box import box_to_mask
from .image import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from .validation import (
    apply_reduction,
    check_labels,
    check_reduction,
    check_same_spatial,
    check_shape,
    check_tensor,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "box_to_mask",
    "denormalize",
    "normalize",
    "apply_reduction",
    "check_labels",
    "check_reduction",
    "check_same_spatial",
    "check_shape",
    "check_tensor",
]
