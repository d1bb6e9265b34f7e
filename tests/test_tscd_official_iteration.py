"""One TSCD training iteration against the official loop body, every random draw on (drop-path, decoder dropout,
SCD grids), each side drawing its own from the same seed.

Official side, written independently of wsseg: ``benchmarks/_official_loops.py`` ``official_tscd_iteration`` on
``tests/reference/official_tscd_net.py`` (with the official drop-path): the order of ``scripts/dist_train_voc.py``
of TSCD (forward, multi-scale CAM of the crop, 0.3× view forward + CAM, SCD with ``torch.rand`` grids, inert
``L_er``, per-image VARM pseudo label, ``get_seg_loss``, ``get_energy_loss``, ``cams_to_affinity_label`` with
``get_mask_by_radius``, ``get_aff_loss``). wsseg side: ``create_model("tscd")`` loaded through
``convert_official_state_dict`` and :class:`~wsseg.training.TSCDTrainingStep` after ``cam_iters``. The energy
layer is the same object on both sides (the official one is a compiled lattice; tested elsewhere).

MiT-B0 widths, decoder 32, one image at crop 224 (the smallest crop whose 0.15× CAM pass still covers the first
stage's 8× spatial reduction).
"""

from __future__ import annotations

from benchmarks.bench_official_iteration import tscd_case


def test_tscd_iteration_equals_the_official_loop_body():
    res = tscd_case(quick=True).check()
    print(f"TSCD iteration vs official loop body: {res}")
    assert res["same_random_draws"] is True  # same number of draws from the global RNG
    assert res["loss_close"], (res["loss_official"], res["loss_wsseg"])
    assert res["grads"] == 192 and res["worst_rel_grad"] <= 1e-4, res
    # the four linear_c* biases in front of the decoder's train-mode BatchNorm: exact gradient 0 (rounding noise)
    assert res["zero_grads"] <= 4 and res["zero_grads_max_abs"] < 1e-6, res
    # the decoder's BatchNorm statistics after the 8 train-mode passes (crop, 0.3x view, 6 CAM passes)
    assert res["bn_running_stats_worst_rel"] <= 1e-5, res
