"""Tests for GT-label filtering of logits (wsseg.metrics.filter_logits)."""

import pytest
import torch

from wsseg.metrics import filter_logits_by_labels


def test_values_and_background_kept():
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    out = filter_logits_by_labels(logits, labels)
    assert torch.equal(out[0, [0, 1, 3]], logits[0, [0, 1, 3]])
    assert torch.all(out[0, 2] == -1e5)
    # no foreground label: only background survives, argmax is background everywhere
    assert torch.equal(out[1, 0], logits[1, 0])
    assert torch.all(out[1, 1:] == -1e5)
    assert torch.all(out[1].argmax(0) == 0)
    # input untouched
    assert not torch.equal(out, logits)


def test_argmax_restricted_to_present_classes():
    logits = torch.randn(3, 6, 5, 5) * 5
    labels = (torch.rand(3, 5) > 0.5).float()
    pred = filter_logits_by_labels(logits, labels).argmax(1)
    allowed = torch.cat([torch.ones(3, 1), labels], dim=1).bool()
    assert torch.all(allowed.gather(1, pred.flatten(1)))


def test_label_dtypes_and_fill():
    logits = torch.zeros(1, 3, 2, 2)
    for labels in (torch.tensor([[1, 0]]), torch.tensor([[True, False]]), torch.tensor([[1.0, 0.0]])):
        out = filter_logits_by_labels(logits, labels, fill=-7.0)
        assert out[0, :, 0, 0].tolist() == [0.0, 0.0, -7.0]


def test_half_precision_and_grad():
    out = filter_logits_by_labels(torch.zeros(1, 3, 2, 2, dtype=torch.bfloat16), torch.tensor([[0.0, 1.0]]))
    assert out.dtype == torch.bfloat16
    assert out[0, 1, 0, 0].item() < -9e4 and out[0, 2, 0, 0].item() == 0.0
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    filter_logits_by_labels(x, torch.tensor([[0.0, 1.0]])).sum().backward()
    assert x.grad[0, 1].abs().sum() == 0 and torch.all(x.grad[0, [0, 2]] == 1)


def test_errors():
    with pytest.raises(ValueError, match="logits"):
        filter_logits_by_labels(torch.zeros(3, 2, 2), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="logits"):
        filter_logits_by_labels(torch.zeros(1, 3, 2, 2, dtype=torch.long), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="labels"):
        filter_logits_by_labels(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="labels"):
        filter_logits_by_labels(torch.zeros(2, 3, 2, 2), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="labels"):
        filter_logits_by_labels(torch.zeros(1, 3, 2, 2), [[0, 1]])
