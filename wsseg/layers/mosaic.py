"""ViT-PCM's 2×2 mosaic of the equivariance view and the split of its prediction back into the four images.

Both are batched tensor operations applied inside the training step (the official ``VITPCM.merged_step`` and
``compute_cce_loss``), not per-sample dataset transforms, so they live in :mod:`wsseg.layers`.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from ..utils.validation import check_tensor

__all__ = ["Mosaic2x2", "Unmosaic2x2", "mosaic_2x2", "unmosaic_2x2"]


def _check_batch_multiple_of_4(x: Tensor, name: str) -> None:
    if x.shape[0] % 4 != 0:
        raise ValueError(
            f"{name}: expected a batch size divisible by 4 (groups of 4 consecutive images form one mosaic), "
            f"got shape {tuple(x.shape)}"
        )


def mosaic_2x2(x: Tensor) -> Tensor:
    r"""Tile groups of 4 consecutive images into one image of twice the side (ViT-PCM's ``merged_step``).

    Image :math:`4n + 2i + j` of the batch (:math:`i, j \in \{0, 1\}`) becomes tile (row :math:`i`,
    column :math:`j`) of mosaic :math:`n`:

    .. math::

        \mathrm{out}_{n,:,\,i h + u,\,j w + v} = x_{4n + 2i + j,\,:,\,u,\,v},

    i.e. the order is top-left, top-right, bottom-left, bottom-right (row-major), the order in which
    TensorFlow's ``extract_image_patches`` lists non-overlapping patches; the official code builds the
    mosaic as the inverse of that extraction (through a gradient). ViT-PCM feeds the mosaic of the
    192×192 second views (a 384×384 image) through the network once; :func:`unmosaic_2x2` splits the
    24×24 prediction back into four 12×12 grids in the same order.

    The batch size must be divisible by 4. (The official slice ``batch[:4*B//4]`` parses as
    ``batch[:(4*B)//4]``, i.e. the whole batch, so a batch size not divisible by 4 fails there too; the
    remainder is not dropped.)

    Args:
        x: batch of images (or any maps), channels-first.

    Returns:
        The mosaics.

    Shape:
        - x: :math:`(B, C, h, w)`, :math:`B` divisible by 4 (ViT-PCM: :math:`(B, 3, 192, 192)`).
        - output: :math:`(B/4, C, 2h, 2w)`.

    Raises:
        TypeError: if ``x`` is not a tensor.
        ValueError: if ``x`` is not 4-D or its batch size is not divisible by 4.

    Example:
        >>> x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2)   # image k filled with k
        >>> mosaic_2x2(x)[0, 0]
        tensor([[0., 0., 1., 1.],
                [0., 0., 1., 1.],
                [2., 2., 3., 3.],
                [2., 2., 3., 3.]])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``VITPCM.merged_step``) and ``utils.py`` (``extract_nonoverlapping_patches_inverse``).
    """
    check_tensor(x, "x", ndim=4, dims="(B, C, h, w)")
    _check_batch_multiple_of_4(x, "x")
    return rearrange(x, "(n i j) c h w -> n c (i h) (j w)", i=2, j=2)


def unmosaic_2x2(pred: Tensor) -> Tensor:
    r"""Split mosaic predictions back into the four per-image grids (inverse of :func:`mosaic_2x2`).

    .. math::

        \mathrm{out}_{4n + 2i + j,\,:,\,u,\,v} = \mathrm{pred}_{n,:,\,i g + u,\,j g + v}

    (tiles in row-major order: top-left, top-right, bottom-left, bottom-right), as the official
    ``extract_nonoverlapping_patches(preds, size=SCALE // PATCH_SIZE)`` in ``compute_cce_loss``. The
    ViT-PCM mosaic of 192² views gives a 24×24 patch grid, split into four 12×12 grids. Patches on the
    seams see context from the neighbouring tiles (attention and the HV-BiLSTM run over the whole
    mosaic); this is the official behaviour.

    Args:
        pred: per-patch predictions of the mosaics, channels-first.

    Returns:
        The per-image grids, in the order of the batch given to :func:`mosaic_2x2`.

    Shape:
        - pred: :math:`(M, C, 2g, 2g')` (ViT-PCM: :math:`(B/4, C, 24, 24)`).
        - output: :math:`(4M, C, g, g')`.

    Raises:
        TypeError: if ``pred`` is not a tensor.
        ValueError: if ``pred`` is not 4-D or a spatial size is odd.

    Example:
        >>> x = torch.randn(8, 21, 12, 12)
        >>> torch.equal(unmosaic_2x2(mosaic_2x2(x)), x)
        True

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``compute_cce_loss``) and ``utils.py`` (``extract_nonoverlapping_patches``).
    """
    check_tensor(pred, "pred", ndim=4, dims="(M, C, 2g, 2g)")
    if pred.shape[-2] % 2 or pred.shape[-1] % 2:
        raise ValueError(f"pred: expected even spatial sizes (2g, 2g'), got shape {tuple(pred.shape)}")
    return rearrange(pred, "n c (i h) (j w) -> (n i j) c h w", i=2, j=2)


class Mosaic2x2(nn.Module):
    r"""Module form of :func:`mosaic_2x2` (no hyperparameters).

    .. math::

        \mathrm{out}_{n,:,\,i h + u,\,j w + v} = x_{4n + 2i + j,\,:,\,u,\,v}

    Shape:
        - x: :math:`(B, C, h, w)`, :math:`B` divisible by 4.
        - output: :math:`(B/4, C, 2h, 2w)`.

    Raises:
        ValueError: see :func:`mosaic_2x2`.

    Example:
        >>> Mosaic2x2()(torch.rand(8, 3, 192, 192)).shape
        torch.Size([2, 3, 384, 384])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``VITPCM.merged_step``).
    """

    def forward(self, x: Tensor) -> Tensor:
        """Tile; see :func:`mosaic_2x2`."""
        return mosaic_2x2(x)


class Unmosaic2x2(nn.Module):
    r"""Module form of :func:`unmosaic_2x2` (no hyperparameters).

    .. math::

        \mathrm{out}_{4n + 2i + j,\,:,\,u,\,v} = \mathrm{pred}_{n,:,\,i g + u,\,j g + v}

    Shape:
        - pred: :math:`(M, C, 2g, 2g')`.
        - output: :math:`(4M, C, g, g')`.

    Raises:
        ValueError: see :func:`unmosaic_2x2`.

    Example:
        >>> Unmosaic2x2()(torch.rand(2, 21, 24, 24)).shape
        torch.Size([8, 21, 12, 12])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``compute_cce_loss``).
    """

    def forward(self, pred: Tensor) -> Tensor:
        """Split; see :func:`unmosaic_2x2`."""
        return unmosaic_2x2(pred)
