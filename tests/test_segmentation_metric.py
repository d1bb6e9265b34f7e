"""Tests for the confusion-matrix mIoU (wsseg.metrics.segmentation_metric)."""

import math

import pytest
import torch

from wsseg.metrics import SegmentationMetric, confusion_matrix, miou_from_confusion

# Tiny example (C = 3), counted by hand:
# target: 0 0 1 1 | 2 255 1 0      pred: 0 1 1 1 | 2 0 2 0
# pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) [ignored] (1,2) (0,0)
PRED = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
TARGET = torch.tensor([[[0, 0, 1, 1], [2, 255, 1, 0]]])
CONF = torch.tensor([[2, 1, 0],
                     [0, 2, 1],
                     [0, 0, 1]])
# IoU_0 = 2 / (3 + 2 - 2) = 2/3; IoU_1 = 2 / (3 + 3 - 2) = 1/2; IoU_2 = 1 / (1 + 2 - 1) = 1/2
IOU = [2 / 3, 1 / 2, 1 / 2]


def test_confusion_hand_computed():
    assert torch.equal(confusion_matrix(PRED, TARGET, 3), CONF)


def test_metric_hand_computed():
    m = SegmentationMetric(3)
    m.update(PRED, TARGET)
    res = m.compute()
    assert torch.equal(res["confusion"], CONF)
    assert torch.allclose(res["iou"], torch.tensor(IOU, dtype=torch.float64))
    assert res["miou"] == pytest.approx(sum(IOU) / 3)
    assert res["pixel_acc"] == pytest.approx(5 / 7)
    assert res["present"].tolist() == [True, True, True]
    assert res["iou"].dtype == torch.float64 and res["present"].dtype == torch.bool


def test_ignore_index_excluded_and_custom():
    # change only the ignored pixel's prediction: nothing changes
    pred2 = PRED.clone()
    pred2[0, 1, 1] = 2
    assert torch.equal(confusion_matrix(pred2, TARGET, 3), CONF)
    # a custom ignore index
    t = TARGET.clone()
    t[t == 255] = 7
    assert torch.equal(confusion_matrix(PRED, t, 3, ignore_index=7), CONF)
    # ignore_index=None counts everything -> a 255 in the target is an error
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(PRED, TARGET, 3, ignore_index=None)


def test_absent_class_excluded_from_mean():
    # class 2 has no GT pixel but is predicted once (a false positive): its IoU is 0 and is reported,
    # yet it is excluded from the mean (CoSA's nanmean(iu[valid])); class 3 is neither -> NaN.
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 2, 1, 1]])
    res = miou_from_confusion(confusion_matrix(pred, target, 4))
    assert res["present"].tolist() == [True, True, False, False]
    assert res["iou"][2].item() == 0.0
    assert math.isnan(res["iou"][3].item())
    # IoU_0 = 1 / (2 + 1 - 1) = 1/2; IoU_1 = 1 -> mean 3/4 (not (0.5 + 1 + 0) / 3)
    assert res["miou"] == pytest.approx(0.75)


def test_empty_metric_is_nan():
    res = SegmentationMetric(3).compute()
    assert math.isnan(res["miou"]) and math.isnan(res["pixel_acc"])
    # only ignored pixels
    m = SegmentationMetric(3)
    m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    assert math.isnan(m.compute()["miou"])


def test_permutation_invariance():
    g = torch.Generator().manual_seed(0)
    c = 5
    target = torch.randint(0, c, (2, 9, 11), generator=g)
    target[0, :2] = 255
    pred = torch.randint(0, c, (2, 9, 11), generator=g)
    perm = torch.randperm(c, generator=g)
    lut = torch.cat([perm, torch.zeros(256 - c, dtype=torch.long)])
    lut[255] = 255
    a = SegmentationMetric(c)
    a.update(pred, target)
    b = SegmentationMetric(c)
    b.update(perm[pred], lut[target])
    ra, rb = a.compute(), b.compute()
    assert ra["miou"] == pytest.approx(rb["miou"])
    assert torch.allclose(ra["iou"], rb["iou"][perm])
    assert torch.equal(ra["confusion"], rb["confusion"][perm][:, perm])


def test_matches_loop_reference():
    g = torch.Generator().manual_seed(1)
    c = 4
    target = torch.randint(0, c, (3, 7, 5), generator=g)
    target[target == 3] = 255
    pred = torch.randint(0, c, (3, 7, 5), generator=g)
    ref = torch.zeros(c, c, dtype=torch.long)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != 255:
            ref[t, p] += 1
    assert torch.equal(confusion_matrix(pred, target, c), ref)


def test_accumulate_and_merge_equal_single_pass():
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (4, 6, 6), generator=g)
    pred = torch.randint(0, 3, (4, 6, 6), generator=g)
    whole = SegmentationMetric(3)
    whole.update(pred, target)
    acc = SegmentationMetric(3)
    acc.update(pred[:2], target[:2])
    acc.update(pred[2:3], target[2:3])
    other = SegmentationMetric(3)
    other.update(pred[3:], target[3:])
    assert acc.merge(other) is acc
    assert torch.equal(acc.compute()["confusion"], whole.compute()["confusion"])
    acc.reset()
    assert int(acc.compute()["confusion"].sum()) == 0


def test_merge_errors():
    with pytest.raises(ValueError, match="other"):
        SegmentationMetric(3).merge(SegmentationMetric(4))
    with pytest.raises(TypeError, match="other"):
        SegmentationMetric(3).merge("x")


def test_pred_ignore_index_for_pseudo_labels():
    # CoSA pseudo_scores: pixels whose pseudo label is 255 are not scored
    target = torch.tensor([[0, 1, 1, 0]])
    pred = torch.tensor([[0, 255, 1, 1]])
    conf = confusion_matrix(pred, target, 2, pred_ignore_index=255)
    assert conf.tolist() == [[1, 1], [0, 1]]
    m = SegmentationMetric(2, pred_ignore_index=255)
    m.update(pred, target)
    assert torch.equal(m.compute()["confusion"], conf)


def test_validation_errors():
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetric(0)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(PRED, TARGET, 0)
    with pytest.raises(TypeError, match="pred"):
        confusion_matrix(PRED.float(), TARGET, 3)
    with pytest.raises(TypeError, match="target"):
        confusion_matrix(PRED, TARGET.float(), 3)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(PRED[:, :1], TARGET, 3)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(PRED + 5, TARGET, 3)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(PRED, TARGET.clamp(max=9) + 1, 3)
    with pytest.raises(ValueError, match="conf"):
        miou_from_confusion(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="conf"):
        miou_from_confusion([[1, 0], [0, 1]])
