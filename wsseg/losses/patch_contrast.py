"""EXPERIMENTAL: APC's patch contrastive loss on patch embeddings (formula [assumed], ``apc.md`` §4)."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..utils.validation import check_finite, check_reduction, check_shape, check_tensor, empty_loss

__all__ = ["PatchContrastLoss", "patch_contrast_loss", "DEFAULT_MAX_BATCH_TOKENS", "DEFAULT_CHUNK_PAIRS"]

#: Largest number of patches B·N accepted with ``scope="batch"`` (the pairwise cost grows as (B·N)²).
#: 16,384 = 2 × the ViT-PCM training batch (16 images × 576 patches), i.e. 2.7·10⁸ ordered pairs.
DEFAULT_MAX_BATCH_TOKENS = 16384

#: Largest number of similarity entries (scope groups × rows × columns) held at once; larger problems are
#: computed in row chunks whose activations are recomputed in the backward pass (activation checkpointing).
#: 2²³ ≈ 8.4M pairs (32 MiB of float32 similarities); the ViT-PCM image scope (16 × 576²) is a single chunk.
DEFAULT_CHUNK_PAIRS = 2**23

_FORMS = ("margin", "infonce")
_SCOPES = ("image", "batch")


def _check_float(value: object, name: str, *, positive: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite float, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: expected a positive float, got {value!r}")
    return float(value)


def _check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name}: expected an int{bound}, got {value!r}")
    return value


def _check_hparams(form: str, margin: float, temperature: float | None, scope: str, min_confidence: float | None,
                   ignore_index: int, eps: float, reduction: str, max_batch_tokens: int,
                   chunk_pairs: int) -> tuple[float, float | None, float | None]:
    if form not in _FORMS:
        raise ValueError(f"form: expected one of {_FORMS}, got {form!r}")
    if scope not in _SCOPES:
        raise ValueError(f"scope: expected one of {_SCOPES}, got {scope!r}")
    margin = _check_float(margin, "margin")
    if form == "infonce" and temperature is None:
        raise ValueError("temperature: required for form='infonce' (APC's value is unknown, so there is no "
                         "default; supervised-contrastive work commonly uses 0.07-0.1)")
    if temperature is not None:
        temperature = _check_float(temperature, "temperature", positive=True)
    if min_confidence is not None:
        min_confidence = _check_float(min_confidence, "min_confidence")
    _check_int(ignore_index, "ignore_index")
    eps = _check_float(eps, "eps", positive=True)
    check_reduction(reduction)
    if scope == "batch" and reduction == "none":
        raise ValueError("reduction: 'none' is not defined for scope='batch' (the batch is one pair set and "
                         "gives a single value); use 'mean' or 'sum', or scope='image' for per-image values")
    _check_int(max_batch_tokens, "max_batch_tokens", minimum=1)
    _check_int(chunk_pairs, "chunk_pairs", minimum=1)
    return margin, temperature, min_confidence


def _chunk_terms(e_hat: Tensor, y: Tensor, valid: Tensor, start: int, stop: int, *, form: str, margin: float,
                 temperature: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-group partial sums for anchor rows ``start:stop`` of the similarity matrix.

    ``e_hat`` (G, M, D) unit vectors, ``y`` (G, M) labels, ``valid`` (G, M) bool. Returns four (G,) tensors:
    margin form: (Σ_{Π⁺} (1 − S), |Π⁺|, Σ_{Π⁻} max(0, S − m), |Π⁻|) restricted to the rows;
    InfoNCE form: (Σ_{anchors} ℓ_i, number of anchors, 0, 0).
    """
    rows = e_hat[:, start:stop]                                                    # (G, R, D)
    sim = torch.matmul(rows, e_hat.transpose(1, 2))                                # (G, R, M)
    if sim.dtype in (torch.float16, torch.bfloat16):                               # autocast: terms in fp32
        sim = sim.float()
    m = e_hat.shape[1]
    not_self = (torch.arange(start, stop, device=y.device)[:, None]
                != torch.arange(m, device=y.device)[None, :])                      # (R, M)
    pair = valid[:, start:stop, None] & valid[:, None, :]                         # (G, R, M)
    same = y[:, start:stop, None] == y[:, None, :]
    pos = same & pair & not_self
    if form == "margin":
        zero = sim.new_zeros(())
        pos_sum = torch.where(pos, 1.0 - sim, zero).sum(dim=(1, 2))
        neg = pair & ~same
        neg_sum = torch.where(neg, F.relu(sim - margin), zero).sum(dim=(1, 2))
        return pos_sum, pos.sum(dim=(1, 2)), neg_sum, neg.sum(dim=(1, 2))
    logits = sim / temperature
    denom = pair & not_self                                                        # k != i, k valid
    n_pos = pos.sum(dim=2)                                                         # (G, R)
    anchor = n_pos > 0
    # Rows that are not anchors are dropped below; open their mask so the log-sum-exp stays finite (an all
    # -inf row would give NaN gradients through torch.where).
    denom = denom | ~anchor[:, :, None]
    lse = torch.logsumexp(logits.masked_fill(~denom, float("-inf")), dim=2)       # (G, R)
    pos_mean = torch.where(pos, logits, logits.new_zeros(())).sum(dim=2) / n_pos.clamp_min(1)
    ell = torch.where(anchor, lse - pos_mean, lse.new_zeros(()))
    zeros = n_pos.new_zeros(n_pos.shape[0])
    return ell.sum(dim=1), anchor.sum(dim=1), zeros, zeros


def _group_loss(e_hat: Tensor, y: Tensor, valid: Tensor, *, form: str, margin: float, temperature: float | None,
                chunk_pairs: int) -> Tensor:
    """The loss of every scope group, (G,), computed in row chunks of at most ``chunk_pairs`` entries."""
    g, m, _ = e_hat.shape
    if m == 0:                                                                     # nothing kept: 0, with a graph
        return e_hat.sum(dim=(1, 2)) * 0.0
    rows = max(1, min(m, chunk_pairs // max(1, g * m)))
    fn = partial(_chunk_terms, form=form, margin=margin, temperature=temperature)
    use_ckpt = rows < m and torch.is_grad_enabled() and e_hat.requires_grad
    acc = None
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        if use_ckpt:
            parts = checkpoint(fn, e_hat, y, valid, start, stop, use_reentrant=False)
        else:
            parts = fn(e_hat, y, valid, start, stop)
        acc = list(parts) if acc is None else [a + p for a, p in zip(acc, parts, strict=True)]
    a_sum, a_cnt, b_sum, b_cnt = acc
    zero = a_sum.new_zeros(())
    loss = torch.where(a_cnt > 0, a_sum / a_cnt.clamp_min(1), zero)
    if form == "margin":
        loss = loss + torch.where(b_cnt > 0, b_sum / b_cnt.clamp_min(1), zero)
    return loss


def patch_contrast_loss(embeddings: Tensor, patch_labels: Tensor, confidence: Tensor | None = None, *,
                        form: str = "margin", margin: float = 0.0, temperature: float | None = None,
                        scope: str = "image", min_confidence: float | None = None, ignore_index: int = 255,
                        eps: float = 1e-8, reduction: str = "mean",
                        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                        chunk_pairs: int = DEFAULT_CHUNK_PAIRS) -> Tensor:
    r"""Experimental: pull same-class patch embeddings together and push other classes apart (cosine).

    **Experimental — formula [assumed].** APC (Wu et al. 2024) describes its patch contrastive learning only
    as "calculating pairwise cosine similarities" so that same-class patch embeddings come closer and
    different-class ones move apart; the published method section has not been verified and no official code
    is known. Both forms below, the pair scope, the confidence filter and the empty-set rule are the spec's
    assumptions (``apc.md`` §4), not the published loss.

    With :math:`\hat e_i = e_i / \max(\lVert e_i\rVert_2, \epsilon)` and :math:`S_{ij} = \hat e_i^\top \hat e_j`
    over the patches of one scope group (one image for ``scope="image"``, the whole batch for
    ``scope="batch"``), restricted to the *kept* patches (label :math:`\ne` ``ignore_index`` and, when
    ``min_confidence`` :math:`\gamma` is set, confidence :math:`\ge \gamma`), with
    :math:`\Pi^+ = \{(i, j) : i \ne j,\ \hat y_i = \hat y_j\}` and :math:`\Pi^- = \{(i, j) : \hat y_i \ne \hat y_j\}`
    (ordered pairs):

    ``form="margin"`` (the spec's default):

    .. math::

        L = \frac{1}{|\Pi^+|}\sum_{(i,j) \in \Pi^+} (1 - S_{ij})
          + \frac{1}{|\Pi^-|}\sum_{(i,j) \in \Pi^-} \max(0,\ S_{ij} - m)

    ``form="infonce"`` (supervised-contrastive style), over the anchors :math:`A = \{i : P(i) \ne \emptyset\}`,
    :math:`P(i) = \{j \ne i : \hat y_j = \hat y_i\}`, :math:`k` over the kept patches of the group:

    .. math::

        L = \frac{1}{|A|}\sum_{i \in A} -\frac{1}{|P(i)|}\sum_{j \in P(i)}
            \log \frac{\exp(S_{ij} / t)}{\sum_{k \ne i} \exp(S_{ik} / t)}

    An empty :math:`\Pi^+`, :math:`\Pi^-` or :math:`A` contributes 0 to its part [assumed]. The labels (and
    the confidence) only select pairs: they are detached, and the gradient reaches the embeddings on both
    sides of every pair. No memory bank, momentum encoder or projection head is used.

    Args:
        embeddings: patch embeddings, e.g. ViT-PCM's HV-BiLSTM output [assumed]. Only their directions
            matter (invariant to a positive rescaling of any patch).
        patch_labels: hard patch (pseudo-)labels, e.g. the argmax of ``merge_class_labels`` of the model's
            patch probabilities [assumed]; any integer values, ``ignore_index`` = no pair.
        confidence: per-patch confidence (e.g. the max merged probability); required when
            ``min_confidence`` is set, and an error otherwise. Must be finite (a NaN would silently drop
            its patch; checked with one reduction).
        form: ``"margin"`` or ``"infonce"``.
        margin: :math:`m`, the cosine tolerated between different classes (margin form only; default 0 =
            push the cosine to :math:`\le 0`, the spec's choice [assumed]). Ignored by ``"infonce"``.
        temperature: :math:`t > 0`, **required** for ``"infonce"`` (no published value); ignored by
            ``"margin"``.
        scope: ``"image"`` (pairs within each image) or ``"batch"`` (all pairs of the batch, across images).
            Which one APC uses is unknown.
        min_confidence: :math:`\gamma`; patches with confidence below it are dropped. ``None`` = no filter.
        ignore_index: label value that takes part in no pair.
        eps: :math:`\epsilon` of the normalisation (a zero embedding stays zero).
        reduction: with ``scope="image"``: ``"none"`` returns the per-image losses :math:`(B,)`, ``"mean"``
            their mean over all B images (an image without pairs counts as 0), ``"sum"`` their sum. With
            ``scope="batch"`` the batch is one pair set and gives one value: ``"mean"`` and ``"sum"`` both
            return it and ``"none"`` raises.
        max_batch_tokens: with ``scope="batch"``, the largest B·N accepted (default
            :data:`DEFAULT_MAX_BATCH_TOKENS` = 16,384); larger inputs raise a :class:`ValueError` instead of
            running out of memory or time. Not used with ``scope="image"``.
        chunk_pairs: the most similarity entries held at once (default :data:`DEFAULT_CHUNK_PAIRS` = 2²³);
            above it the rows are processed in chunks with activation checkpointing (memory
            O(chunk_pairs + B·N·D) instead of O(pairs), at the cost of recomputing each chunk once in the
            backward pass). The result does not depend on it beyond float rounding.

    Returns:
        A scalar, or a :math:`(B,)` tensor for ``scope="image", reduction="none"``. float32 for half-precision
        inputs and under autocast (the similarities are computed in the autocast dtype, the terms in float32).
        Unweighted (the caller applies the method's loss weight). An empty batch (:math:`B = 0`) gives 0 with
        a graph (``embeddings.sum() * 0``; an empty :math:`(0,)` tensor for ``"none"``). NaN in the
        embeddings propagates.

    Shape:
        - embeddings: :math:`(B, N, D)` or :math:`(B, D, h, w)` (then :math:`N = h w`, row-major).
        - patch_labels: :math:`(B, N)` with :math:`(B, N, D)` embeddings, :math:`(B, h, w)` with
          :math:`(B, D, h, w)`; integer dtype.
        - confidence: same shape as ``patch_labels``, floating point.
        - Cost: time O(B·N²·D) for ``"image"``, O((B·N)²·D) for ``"batch"``; memory
          O(min(pairs, chunk_pairs) + B·N·D).

    Raises:
        TypeError: if ``embeddings``/``confidence`` are not floating point or ``patch_labels`` is not an
            integer tensor.
        ValueError: on wrong ranks or shapes, an unknown ``form``/``scope``/``reduction``, a missing
            ``temperature`` for ``"infonce"``, ``confidence`` without ``min_confidence`` or vice versa,
            ``reduction="none"`` with ``scope="batch"``, B·N > ``max_batch_tokens`` with ``scope="batch"``, or a
            non-finite ``confidence``.

    Example:
        >>> emb = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]]])      # classes 0, 0, 1: orthogonal
        >>> labels = torch.tensor([[0, 0, 1]])
        >>> patch_contrast_loss(emb, labels).item()                          # (1 - 1) + max(0, 0 - 0)
        0.0
        >>> loss = patch_contrast_loss(emb, labels, form="infonce", temperature=1.0)
        >>> round(loss.item(), 4)                                            # log(1 + e^-1)
        0.3133

    Source:
        APC, Wu et al. 2024, arXiv 2407.10649 (formula assumed, see spec apc.md §4); built on ViT-PCM,
        Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (patch embeddings entering the
        patch classifier; ViT-PCM itself has no contrastive loss).
    """
    margin, temperature, min_confidence = _check_hparams(
        form, margin, temperature, scope, min_confidence, ignore_index, eps, reduction, max_batch_tokens,
        chunk_pairs)
    check_tensor(embeddings, "embeddings", ndim=(3, 4), dims="(B, N, D) or (B, D, h, w)", dtype="float")
    check_tensor(patch_labels, "patch_labels", dtype="int")
    if embeddings.dim() == 4:
        b, _, h, w = embeddings.shape
        check_shape(patch_labels, "patch_labels", (b, h, w), "(B, h, w)")
        layout = "(B, h, w)"
        emb = rearrange(embeddings, "b d h w -> b (h w) d")
    else:
        b, n, _ = embeddings.shape
        check_shape(patch_labels, "patch_labels", (b, n), "(B, N)")
        layout = "(B, N)"
        emb = embeddings
    if confidence is not None:
        check_tensor(confidence, "confidence", dtype="float")
        check_shape(confidence, "confidence", tuple(patch_labels.shape), layout)
        if min_confidence is None:
            raise ValueError("confidence: given but min_confidence is None; set min_confidence to filter "
                             "patches, or pass confidence=None")
    elif min_confidence is not None:
        raise ValueError(f"confidence: required when min_confidence is set (got min_confidence={min_confidence}, "
                         "confidence=None)")

    if min_confidence is not None:
        # a NaN confidence would silently drop its patch (NaN >= gamma is False): reject it
        check_finite(confidence, "confidence", " (it is compared with min_confidence)")
    if b == 0:                                                                     # empty batch
        return empty_loss(embeddings, reduction, (0,))
    y = patch_labels.detach().reshape(b, -1)                                     # (B, N)
    valid = y != ignore_index
    if min_confidence is not None:
        valid = valid & (confidence.detach().reshape(b, -1) >= min_confidence)
    if emb.dtype in (torch.float16, torch.bfloat16):
        emb = emb.float()
    e_hat = F.normalize(emb, p=2.0, dim=-1, eps=eps)                              # (B, N, D)
    kwargs = {"form": form, "margin": margin, "temperature": temperature, "chunk_pairs": chunk_pairs}

    if scope == "image":
        per_image = _group_loss(e_hat, y, valid, **kwargs)                        # (B,)
        if reduction == "none":
            return per_image
        return per_image.sum() if reduction == "sum" else per_image.mean()

    tokens = y.numel()
    if tokens > max_batch_tokens:
        raise ValueError(f"embeddings: scope='batch' accepts at most max_batch_tokens={max_batch_tokens} "
                         f"patches (B·N), got {tokens} = {b}×{tokens // max(b, 1)}; use scope='image' or raise "
                         "max_batch_tokens (time grows as (B·N)²)")
    keep = valid.reshape(-1)
    e_kept = e_hat.reshape(tokens, -1)[keep][None]                                # (1, M, D), M kept patches
    y_kept = y.reshape(-1)[keep][None]
    return _group_loss(e_kept, y_kept, torch.ones_like(y_kept, dtype=torch.bool), **kwargs)[0]


class PatchContrastLoss(nn.Module):
    r"""Experimental: module form of :func:`patch_contrast_loss` (APC's patch contrastive learning, [assumed]).

    **Experimental — formula [assumed]** (``apc.md`` §4); see the function for the definitions, the empty-set
    rule, the gradient (labels detached) and the cost.

    .. math::

        L_{margin} = \operatorname{mean}_{\Pi^+}(1 - S_{ij}) + \operatorname{mean}_{\Pi^-}\max(0, S_{ij} - m),
        \qquad
        L_{infonce} = \operatorname{mean}_{i}\Big[-\operatorname{mean}_{j \in P(i)}
            \log\frac{e^{S_{ij}/t}}{\sum_{k \ne i} e^{S_{ik}/t}}\Big]

    Args:
        form: ``"margin"`` (default) or ``"infonce"``.
        margin: :math:`m` (margin form; default 0 [assumed]).
        temperature: :math:`t`, **required** for ``"infonce"`` (no default: APC's value is unknown).
        scope: ``"image"`` (default) or ``"batch"``.
        min_confidence: confidence threshold :math:`\gamma`, or ``None``.
        ignore_index: label value that takes part in no pair.
        eps: normalisation epsilon.
        reduction: ``"mean"``, ``"sum"``, or ``"none"`` (per-image :math:`(B,)`, ``scope="image"`` only).
        max_batch_tokens: largest B·N for ``scope="batch"`` (:data:`DEFAULT_MAX_BATCH_TOKENS`).
        chunk_pairs: similarity entries per chunk (:data:`DEFAULT_CHUNK_PAIRS`).

    Shape:
        - embeddings: :math:`(B, N, D)` or :math:`(B, D, h, w)`.
        - patch_labels: :math:`(B, N)` or :math:`(B, h, w)` (integer); confidence: same shape, or ``None``.
        - output: scalar, or :math:`(B,)` for ``reduction="none"``.

    Raises:
        ValueError: on invalid hyperparameters (at construction), including a missing ``temperature`` for
            ``"infonce"``; see the function for the inputs.

    Example:
        >>> loss_fn = PatchContrastLoss(form="infonce", temperature=0.1)
        >>> emb = torch.randn(2, 8, 4, 4, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 4, 4))
        >>> loss = loss_fn(emb, labels)
        >>> loss.backward(); emb.grad.shape
        torch.Size([2, 8, 4, 4])

    Source:
        APC, Wu et al. 2024, arXiv 2407.10649 (formula assumed, see spec apc.md §4); ViT-PCM, Rossetti et al.
        ECCV 2022; github.com/deepplants/ViT-PCM, model.py (the patch embeddings).
    """

    def __init__(self, form: str = "margin", margin: float = 0.0, temperature: float | None = None,
                 scope: str = "image", min_confidence: float | None = None, ignore_index: int = 255,
                 eps: float = 1e-8, reduction: str = "mean", max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 chunk_pairs: int = DEFAULT_CHUNK_PAIRS) -> None:
        super().__init__()
        self.margin, self.temperature, self.min_confidence = _check_hparams(
            form, margin, temperature, scope, min_confidence, ignore_index, eps, reduction, max_batch_tokens,
            chunk_pairs)
        self.form = form
        self.scope = scope
        self.ignore_index = ignore_index
        self.eps = float(eps)
        self.reduction = reduction
        self.max_batch_tokens = max_batch_tokens
        self.chunk_pairs = chunk_pairs

    def forward(self, embeddings: Tensor, patch_labels: Tensor, confidence: Tensor | None = None) -> Tensor:
        """Compute the loss; see :func:`patch_contrast_loss`."""
        return patch_contrast_loss(
            embeddings, patch_labels, confidence, form=self.form, margin=self.margin,
            temperature=self.temperature, scope=self.scope, min_confidence=self.min_confidence,
            ignore_index=self.ignore_index, eps=self.eps, reduction=self.reduction,
            max_batch_tokens=self.max_batch_tokens, chunk_pairs=self.chunk_pairs)

    def extra_repr(self) -> str:
        params = f"form={self.form!r}, "
        params += f"margin={self.margin}, " if self.form == "margin" else f"temperature={self.temperature}, "
        params += (f"scope={self.scope!r}, min_confidence={self.min_confidence}, ignore_index={self.ignore_index}, "
                   f"eps={self.eps}, reduction={self.reduction!r}")
        if self.scope == "batch":
            params += f", max_batch_tokens={self.max_batch_tokens}"
        return params
