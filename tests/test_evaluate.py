"""Tests for the dual (unfiltered + GT-label-filtered) evaluation helpers (wsseg.metrics.evaluate)."""

import pytest
import torch

from wsseg.metrics import (
    DualMIoU,
    SegmentationMetric,
    evaluate_segmentation,
    filter_logits_by_labels,
    format_report,
)


def _batches(n=3, b=2, c=4, h=6, w=5, seed=0, high=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.randint(0, high or c, (b, h, w), generator=g)
        mask[:, 0, 0] = 255
        label = torch.zeros(b, c - 1)
        for i in range(b):
            for k in mask[i].unique().tolist():
                if 0 < k < 255:
                    label[i, k - 1] = 1
        out.append({"image": torch.randn(b, 3, h, w, generator=g), "mask": mask, "label": label})
    return out


def test_dual_hand_example():
    # one image, GT class 1 everywhere; logits prefer absent class 2 -> unfiltered IoU_1 = 0,
    # filtered (class 2 masked) predicts class 1 -> IoU_1 = 1; classes 0 and 2 have no GT -> excluded.
    logits = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 3)
    target = torch.ones(1, 2, 3, dtype=torch.long)
    acc = DualMIoU(3)
    acc.update(logits, target, torch.tensor([[1.0, 0.0]]))
    res = acc.compute()
    assert res["miou"] == 0.0 and res["miou_filtered"] == 1.0
    assert res["confusion"].tolist() == [[0, 0, 0], [0, 0, 6], [0, 0, 0]]
    assert res["confusion_filtered"].tolist() == [[0, 0, 0], [0, 6, 0], [0, 0, 0]]
    assert res["present"].tolist() == [False, True, False]


def test_evaluate_matches_manual_accumulation():
    c = 4
    batches = _batches(c=c)
    head = torch.nn.Conv2d(3, c, 1)
    with torch.no_grad():
        res = evaluate_segmentation(head, batches, c)
        plain, filt = SegmentationMetric(c), SegmentationMetric(c)
        for bt in batches:
            z = head(bt["image"])
            plain.update(z.argmax(1), bt["mask"])
            filt.update(filter_logits_by_labels(z, bt["label"]).argmax(1), bt["mask"])
    assert res["num_images"] == 6
    assert torch.equal(res["confusion"], plain.compute()["confusion"])
    assert torch.equal(res["confusion_filtered"], filt.compute()["confusion"])
    assert res["miou"] == pytest.approx(plain.compute()["miou"])
    assert res["miou_filtered"] == pytest.approx(filt.compute()["miou"])
    for key in ("iou", "iou_filtered", "pixel_acc", "pixel_acc_filtered", "present"):
        assert key in res


def test_filtered_never_worse_with_perfect_labels_on_oracle():
    # logits = one-hot GT + a strong distractor on every class absent from the image (classes 2, 3 never
    # occur): filtering recovers the GT exactly, the plain argmax predicts only absent classes.
    c = 4
    batches = _batches(c=c, seed=3, high=2)

    it = iter(batches)

    def predict(x):
        bt = next(it)
        m = bt["mask"].clone()
        m[m == 255] = 0
        z = torch.nn.functional.one_hot(m, c).permute(0, 3, 1, 2).float()
        z = z + 2.0 * (1 - torch.cat([torch.ones(m.shape[0], 1), bt["label"]], 1))[:, :, None, None]
        return z

    res = evaluate_segmentation(predict, batches, c)
    assert res["miou_filtered"] == pytest.approx(1.0)
    assert res["miou"] == pytest.approx(0.0)
    assert res["present"].tolist() == [True, True, False, False]


def test_logits_resized_to_mask_size():
    batch = {"image": torch.zeros(1, 3, 4, 4), "mask": torch.zeros(1, 8, 8, dtype=torch.long),
             "label": torch.zeros(1, 2)}

    def predict(x):
        z = torch.zeros(1, 3, 2, 2)
        z[:, 0] = 1.0
        return z

    res = evaluate_segmentation(predict, [batch], 3)
    assert int(res["confusion"][0, 0]) == 64
    with pytest.raises(ValueError, match="logits"):
        evaluate_segmentation(predict, [batch], 3, resize_logits=False)


def test_custom_keys():
    bt = _batches(n=1)[0]
    renamed = [{"img": bt["image"], "gt": bt["mask"], "cls": bt["label"]}]
    head = torch.nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        a = evaluate_segmentation(head, [bt], 4)
        b = evaluate_segmentation(head, renamed, 4, image_key="img", mask_key="gt", label_key="cls")
    assert torch.equal(a["confusion"], b["confusion"])
    with pytest.raises(KeyError):
        evaluate_segmentation(head, [bt], 4, mask_key="nope")


def test_dual_merge_and_reset():
    c = 4
    bts = _batches(c=c, seed=5)
    head = torch.nn.Conv2d(3, c, 1)
    with torch.no_grad():
        a, b, whole = DualMIoU(c), DualMIoU(c), DualMIoU(c)
        for i, bt in enumerate(bts):
            z = head(bt["image"])
            (a if i % 2 else b).update(z, bt["mask"], bt["label"])
            whole.update(z, bt["mask"], bt["label"])
    a.merge(b)
    assert torch.equal(a.compute()["confusion_filtered"], whole.compute()["confusion_filtered"])
    a.reset()
    assert int(a.compute()["confusion"].sum()) == 0


def test_format_report_labels_both():
    res = {"miou": 0.7369, "miou_filtered": 0.7572, "iou": torch.tensor([0.9, 0.5, float("nan")]),
           "iou_filtered": torch.tensor([0.91, 0.6, float("nan")]),
           "present": torch.tensor([True, True, False])}
    text = format_report(res, ["cat", "dog"], title="last iteration")
    lines = text.splitlines()
    assert lines[0] == "last iteration"
    assert "unfiltered" in lines[1] and "73.69" in lines[1]
    assert "GT-label-filtered (uses ground truth at test time)" in lines[2] and "75.72" in lines[2]
    assert lines[4].startswith("background") and "90.00" in lines[4] and "91.00" in lines[4]
    assert "dog (no GT)" in lines[6] and "n/a" in lines[6]
    # full C names are accepted, default names too
    assert "class_2" in format_report(res)
    assert "bg" in format_report(res, ["bg", "cat", "dog"])


def test_errors():
    with pytest.raises(ValueError, match="num_classes"):
        DualMIoU(1)
    acc = DualMIoU(3)
    with pytest.raises(ValueError, match="logits"):
        acc.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="target"):
        acc.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="target"):
        acc.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="labels"):
        acc.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3))
    with pytest.raises(TypeError, match="other"):
        acc.merge(SegmentationMetric(3))
    with pytest.raises(TypeError, match="predict_fn"):
        evaluate_segmentation(None, [], 3)
    with pytest.raises(ValueError, match="class_names"):
        format_report({"miou": 0.1, "miou_filtered": 0.1, "iou": [0.1, 0.2, 0.3], "iou_filtered": [0.1, 0.2, 0.3]},
                      ["a"])
    with pytest.raises(KeyError, match="miou_filtered"):
        format_report({"miou": 0.1, "iou": [0.1]})
