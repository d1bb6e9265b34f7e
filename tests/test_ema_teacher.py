"""Tests of the EMA teacher (``wsseg.training.ema_update_`` / ``EMATeacher``)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

import wsseg
from wsseg.training import EMATeacher, ema_update_


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.frozen = nn.Parameter(torch.randn(2), requires_grad=False)
        self.head = nn.Conv2d(3, 2, 1, bias=False)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.head(self.bn(self.body(x))[:, :, None, None])


def _randomize(m, g):
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_closed_form_after_n_steps():
    g = torch.Generator().manual_seed(0)
    teacher, student = _Net().double(), _Net().double()
    _randomize(teacher, g)
    m, n = 0.8, 6
    t0 = {k: v.clone() for k, v in teacher.named_parameters()}
    history = []
    for _ in range(n):
        _randomize(student, g)
        history.append({k: v.clone() for k, v in student.named_parameters()})
        ema_update_(teacher, student, momentum=m)
    for name, p in teacher.named_parameters():
        expected = m ** n * t0[name] + (1 - m) * sum(m ** (n - 1 - i) * history[i][name] for i in range(n))
        torch.testing.assert_close(p, expected, rtol=1e-12, atol=1e-12)


def test_official_single_step_bitwise_float32():
    """One step equals the official mul_(m).add_((1 - m) * student) up to one float32 rounding."""
    teacher, student = _Net(), _Net()
    ref = {k: v.detach().clone().mul_(0.9994).add_((1 - 0.9994) * dict(student.named_parameters())[k].detach())
           for k, v in teacher.named_parameters()}
    ema_update_(teacher, student)
    for k, v in teacher.named_parameters():
        torch.testing.assert_close(v, ref[k], rtol=2e-7, atol=1e-9)


def test_frozen_parameters_are_averaged_too():
    teacher, student = _Net(), _Net()
    before = teacher.frozen.detach().clone()
    ema_update_(teacher, student, momentum=0.5)
    torch.testing.assert_close(teacher.frozen, 0.5 * before + 0.5 * student.frozen)


def test_no_grad_and_extremes():
    teacher, student = _Net(), _Net()
    out = student(torch.randn(2, 4)).sum()
    ema_update_(teacher, student, momentum=0.9)
    assert all(p.grad is None for p in teacher.parameters())
    out.backward()  # the student's graph is untouched by the update
    t0 = [p.detach().clone() for p in teacher.parameters()]
    ema_update_(teacher, student, momentum=1.0)
    assert all(torch.equal(a, b) for a, b in zip(t0, teacher.parameters(), strict=True))
    ema_update_(teacher, student, momentum=0.0)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True))


def test_buffers_option():
    teacher, student = _Net(), _Net()
    student.train()
    student(torch.randn(8, 4))  # moves running stats, num_batches_tracked = 1
    rm_t = teacher.bn.running_mean.clone()
    ema_update_(teacher, student, momentum=0.5)
    assert torch.equal(teacher.bn.running_mean, rm_t) and int(teacher.bn.num_batches_tracked) == 0
    ema_update_(teacher, student, momentum=0.5, buffers=True)
    torch.testing.assert_close(teacher.bn.running_mean, 0.5 * rm_t + 0.5 * student.bn.running_mean)
    assert int(teacher.bn.num_batches_tracked) == 1  # integer buffers are copied


def test_name_mismatch_errors():
    teacher, student = _Net(), _Net()
    teacher.extra = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="student: has no parameter 'extra'"):
        ema_update_(teacher, student)
    teacher2, student2 = _Net(), _Net()
    student2.more = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="teacher: has no parameter 'more'"):
        ema_update_(teacher2, student2)
    teacher3, student3 = _Net(), _Net()
    teacher3.head = nn.Conv2d(3, 5, 1, bias=False)
    with pytest.raises(ValueError, match="'head.weight' has shape"):
        ema_update_(teacher3, student3)
    with pytest.raises(ValueError, match="dtype|float64"):
        ema_update_(_Net(), _Net().double())
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(_Net(), _Net(), momentum=1.5)
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(momentum=-0.1)
    with pytest.raises(ValueError, match="init"):
        EMATeacher(init="clone")


def test_compile_wrapped_student_is_unwrapped():
    teacher, student = _Net(), _Net()
    wrapped = torch.compile(student)  # lazily compiled: no compilation happens here
    ema_update_(teacher, wrapped, momentum=0.0)
    assert torch.equal(teacher.body.weight, student.body.weight)


def test_ddp_wrapped_student_is_unwrapped():
    own = not dist.is_initialized()
    if own:
        fd, path = tempfile.mkstemp()
        os.close(fd)
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    try:
        teacher, student = _Net(), _Net()
        ddp = nn.parallel.DistributedDataParallel(student)
        ema_update_(teacher, ddp, momentum=0.25)
        ref = _Net()
        ref.load_state_dict(teacher.state_dict())
        assert torch.equal(teacher.body.weight, ref.body.weight)
        ema = EMATeacher(init="copy")
        t2 = ema.build(ddp)
        assert not isinstance(t2, nn.parallel.DistributedDataParallel)
        assert torch.equal(t2.body.weight, student.body.weight)
    finally:
        if own:
            dist.destroy_process_group()
            os.unlink(path)


def test_build_copy():
    student = _Net()
    student(torch.randn(3, 4)).sum().backward()
    student.eval()
    teacher = EMATeacher(init="copy").build(student)
    assert teacher is not student and teacher.training
    for (n1, p1), (n2, p2) in zip(teacher.named_parameters(), student.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr()
        assert not p1.requires_grad and p1.grad is None
    assert student.body.weight.requires_grad  # the student is untouched


def test_build_independent_uses_factory():
    calls = []

    def factory():
        calls.append(1)
        return _Net()

    student = _Net()
    ema = EMATeacher(momentum=0.9)
    teacher = ema.build(student, factory)
    assert calls == [1] and teacher.training
    assert not torch.equal(teacher.head.weight, student.head.weight)  # its own random heads
    assert all(not p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="factory"):
        ema.build(student)
    with pytest.raises(TypeError, match="factory"):
        ema.build(student, lambda: 3)
    with pytest.raises(ValueError, match="student: has no parameter"):
        ema.build(student, lambda: nn.Linear(4, 3))
    t0 = teacher.head.weight.clone()
    ema.step(teacher, student)
    torch.testing.assert_close(teacher.head.weight, 0.9 * t0 + 0.1 * student.head.weight)
    assert "init='independent'" in repr(ema)


def test_cosa_teacher_independent_heads_same_pretrained_encoder(tmp_path):
    """Faithful CoSA: two builds share the pretrained encoder weights but have independent heads."""
    torch.manual_seed(0)
    enc = wsseg.backbones.TimmViTBackbone("test_vit")
    path = tmp_path / "enc.pth"
    torch.save(enc.model.state_dict(), path)

    def factory():
        return wsseg.create_model("cosa", backbone="test_vit", num_classes=3, hidden_channels=4, weights=path)

    student = factory()
    teacher = EMATeacher().build(student, factory)
    assert torch.equal(teacher.encoder.model.blocks[0].attn.qkv.weight, student.encoder.model.blocks[0].attn.qkv.weight)
    assert not torch.equal(teacher.classifier.weight, student.classifier.weight)
    assert not torch.equal(teacher.decoder.conv6.weight, student.decoder.conv6.weight)
    ema_update_(teacher, student)  # names match
