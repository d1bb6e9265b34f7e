"""Small shared utilities: input validation, image de-normalisation, crop boxes, stride fitting, allocator."""

from .allocator import keep_freed_cpu_memory
from .box import box_to_mask
from .image import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from .rst_text import rst_to_text
from .stride import fit_to_stride
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
    "fit_to_stride",
    "keep_freed_cpu_memory",
    "normalize",
    "rst_to_text",
    "apply_reduction",
    "check_labels",
    "check_reduction",
    "check_same_spatial",
    "check_shape",
    "check_tensor",
]
