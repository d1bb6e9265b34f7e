"""``examples/evaluate.py --official slrnet``: SLRNet's official post-processing on an authors'-layout checkpoint.

The released WR38 checkpoint is not available here; the stand-in is the official-layout state dict with random
weights that ``tests/test_official_checkpoints.py`` builds (official container, key names and shapes written
down from the official class definitions). The reference is the straight transcription of
``tools/infer_voc.py`` in ``tests/test_evaluate_script.py`` (``official_slrnet_scores``), run on the model
:func:`wsseg.models.load_official_checkpoint` returns.
"""

from __future__ import annotations

import pytest

from tests.test_evaluate_script import official_slrnet_scores
from tests.test_official_checkpoints import _evaluate_main, _stand_in


@pytest.mark.parametrize("long_side", [None, 64])
def test_official_slrnet_applies_the_official_postprocessing(tmp_path, long_side, capsys):
    from wsseg.data import SyntheticShapes, eval_transform
    from wsseg.models import load_official_checkpoint

    ckpt = tmp_path / "slrnet_release.pth"
    _stand_in("slrnet", ckpt)
    flags = [str(ckpt), "--official", "slrnet", "--dataset", "synthetic", "--max-images", "3", "--batch-size", "1",
             "--no-progress", "--threads", "1", "--out", str(tmp_path / "m.json")]
    res = _evaluate_main()(flags + ([] if long_side is None else ["--long-side", str(long_side)]))
    assert "post-processing slrnet" in capsys.readouterr().out
    assert res["official"] is True and res["protocol"]["preset"] == "slrnet"
    assert res["protocol"]["postprocess"]["bg_pow"] == 3.0 and res["protocol"]["resize_to"] == long_side

    model = load_official_checkpoint(ckpt, "slrnet").eval()
    dataset = SyntheticShapes(num_images=3, size=96, num_classes=3, seed=0, transform=eval_transform(None))
    miou_pred, iou_pred = official_slrnet_scores(model, dataset, 3, use_cls_label=False, long_side=long_side)
    miou_gt, iou_gt = official_slrnet_scores(model, dataset, 3, use_cls_label=True, long_side=long_side)
    assert res["seg_miou"] == pytest.approx(miou_pred, abs=1e-9)
    assert res["iou"] == pytest.approx(list(iou_pred), abs=1e-9, nan_ok=True)
    assert res["seg_miou_filtered"] == pytest.approx(miou_gt, abs=1e-9)
    assert res["iou_filtered"] == pytest.approx(list(iou_gt), abs=1e-9, nan_ok=True)

    plain = _evaluate_main()(flags + ["--no-postprocess"] + ([] if long_side is None else ["--long-side",
                                                                                           str(long_side)]))
    assert plain["protocol"]["postprocess"] is None
