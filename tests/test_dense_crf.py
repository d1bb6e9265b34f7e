"""Tests for dense-CRF post-processing (wsseg.pseudo.dense_crf); real CRF tests need pydensecrf2."""

import builtins

import numpy as np
import pytest
import torch

from wsseg.pseudo import DenseCRF, dense_crf
from wsseg.pseudo.dense_crf import DENSE_CRF_PRESETS


def _two_region_case(seed=0, h=32, w=32):
    """Left half dark, right half bright; probabilities correct on average but noisy per pixel."""
    g = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, w // 2:] = 230
    gt = np.zeros((h, w), dtype=np.int64)
    gt[:, w // 2:] = 1
    p1 = np.where(gt == 1, 0.7, 0.3) + g.uniform(-0.35, 0.35, size=(h, w))
    p1 = np.clip(p1, 0.02, 0.98)
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    return img, probs, gt


def test_presets_table():
    assert DENSE_CRF_PRESETS["afa"] == dict(num_iter=10, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=64,
                                            bilateral_srgb=5, bilateral_compat=4)
    assert DENSE_CRF_PRESETS["tscd"] == DENSE_CRF_PRESETS["afa"]
    assert DENSE_CRF_PRESETS["slrnet"] == dict(num_iter=10, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80,
                                               bilateral_srgb=13, bilateral_compat=10)
    assert DENSE_CRF_PRESETS["cosa"] == dict(num_iter=1, gaussian_sxy=1, gaussian_compat=1, bilateral_sxy=121,
                                             bilateral_srgb=5, bilateral_compat=4)
    assert DENSE_CRF_PRESETS["vitpcm"] == dict(num_iter=10, gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67,
                                               bilateral_srgb=3, bilateral_compat=4)
    crf = DenseCRF.from_preset("slrnet")
    assert (crf.num_iter, crf.bilateral_sxy, crf.bilateral_srgb, crf.bilateral_compat) == (10, 80, 13, 10)
    assert "bilateral_srgb=13" in repr(crf)
    with pytest.raises(ValueError, match="name"):
        DenseCRF.from_preset("deeplab")


def test_missing_package_error(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pydensecrf" or name.startswith("pydensecrf."):
            raise ImportError("No module named 'pydensecrf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    img, probs, _ = _two_region_case()
    with pytest.raises(ImportError, match=r'pip install "wsseg\[crf\]"'):
        dense_crf(img, probs)
    with pytest.raises(ImportError, match="pydensecrf"):
        DenseCRF()(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(probs)[None])


def test_validation_errors():
    img, probs, _ = _two_region_case(h=8, w=8)
    with pytest.raises(TypeError, match="image_uint8"):
        dense_crf(img.astype(np.float32), probs)
    with pytest.raises(ValueError, match="image_uint8"):
        dense_crf(img[..., :2], probs)
    with pytest.raises(ValueError, match="probs"):
        dense_crf(img, probs[0])
    with pytest.raises(ValueError, match="probs"):
        dense_crf(img, probs[:, :4])
    with pytest.raises(TypeError, match="probs"):
        dense_crf(img, probs.astype(np.int64))
    with pytest.raises(TypeError, match="probs"):
        dense_crf(img, probs.tolist())
    with pytest.raises(ValueError, match="num_iter"):
        dense_crf(img, probs, num_iter=-1)
    with pytest.raises(ValueError, match="bilateral_srgb"):
        DenseCRF(bilateral_srgb=0)
    crf = DenseCRF()
    timg = torch.from_numpy(img).permute(2, 0, 1)[None]
    tprobs = torch.from_numpy(probs)[None]
    with pytest.raises(TypeError, match="image"):
        crf(timg.float(), tprobs)
    with pytest.raises(ValueError, match="image"):
        crf(timg[:, :2], tprobs)
    with pytest.raises(ValueError, match="probs"):
        crf(timg, tprobs[..., :4])
    with pytest.raises(ValueError, match="probs"):
        crf(timg, torch.cat([tprobs, tprobs]))
    with pytest.raises(TypeError, match="probs"):
        crf(timg, tprobs.long())


def test_crf_cleans_noisy_two_region_probs():
    pytest.importorskip("pydensecrf")
    img, probs, gt = _two_region_case()
    noisy_acc = (probs.argmax(0) == gt).mean()
    assert noisy_acc < 0.9  # the unary alone is noisy
    out = dense_crf(img, probs, **DENSE_CRF_PRESETS["afa"])
    assert out.dtype == torch.int64 and out.shape == (32, 32)
    acc = (out.numpy() == gt).mean()
    assert acc > 0.98 and acc > noisy_acc
    # zero iterations: the marginals are the normalised unary -> argmax of the input
    out0 = dense_crf(img, probs, num_iter=0)
    assert np.array_equal(out0.numpy(), probs.argmax(0))
    q = dense_crf(img, probs, num_iter=5, return_probs=True)
    assert q.shape == (2, 32, 32) and torch.allclose(q.sum(0), torch.ones(32, 32), atol=1e-4)


def test_module_equals_function_per_image():
    pytest.importorskip("pydensecrf")
    cases = [_two_region_case(seed=s, h=16, w=20) for s in (1, 2)]
    image = torch.stack([torch.from_numpy(c[0]).permute(2, 0, 1) for c in cases])
    probs = torch.stack([torch.from_numpy(c[1]) for c in cases])
    crf = DenseCRF.from_preset("cosa")
    out = crf(image, probs)
    assert out.shape == (2, 16, 20) and out.dtype == torch.int64
    for i, (img, p, _) in enumerate(cases):
        assert torch.equal(out[i], dense_crf(img, p, **DENSE_CRF_PRESETS["cosa"]))
    # tensors in -> tensor on probs' device; tensor image input to the function works too
    assert torch.equal(dense_crf(image[0].permute(1, 2, 0), probs[0], **DENSE_CRF_PRESETS["cosa"]), out[0])
