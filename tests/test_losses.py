"""Losses vs hand computation (numbers from the formulas with the math module)."""
import math

import pytest
import torch

from detr_plus.layers.box_ops import inverse_sigmoid, paired_box_iou
from detr_plus.modeling.losses import (
    FocalLoss,
    giou_box_loss,
    l1_box_loss,
    multi_target_quality_focal_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    vfl_plus_loss,
)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_sigmoid_focal_loss_hand_values():
    logits = t([0.0, 2.0, -1.0])
    targets = t([1.0, 1.0, 0.0])
    out = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    p0, p1, p2 = 0.5, sig(2.0), sig(-1.0)
    expected = [
        0.25 * (1 - p0) ** 2 * -math.log(p0),
        0.25 * (1 - p1) ** 2 * -math.log(p1),
        0.75 * p2 ** 2 * -math.log(1 - p2),
    ]
    assert out.shape == (1, 3)
    torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float64))


def test_focal_loss_module_is_eq_5_with_alpha_one_quarter_and_gamma_two():
    """The criterion's default class loss ``FocalLoss()`` (Deformable DETR: alpha 0.25, gamma 2) on the
    one-hot targets: logit 0 (p = 1/2) as a positive, 0.25 x (1/2)^2 x ln 2 = 0.043322; the same logit
    as a negative, 0.75 x (1/2)^2 x ln 2 = 0.129965; logit 2 as a positive, 0.25 x (1 - sigmoid(2))^2 x
    -ln sigmoid(2) = 0.000451."""
    out = FocalLoss()(t([0.0, 0.0, 2.0]), t([1.0, 0.0, 1.0]))
    expected = [0.25 * 0.5 ** 2 * math.log(2), 0.75 * 0.5 ** 2 * math.log(2), 0.25 * (1 - sig(2.0)) ** 2 * -math.log(sig(2.0))]
    assert expected == pytest.approx([0.043322, 0.129965, 0.000451], abs=1e-6)
    torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float64))


def test_l1_box_loss():
    pred = t([0.5, 0.5, 0.2, 0.2], [0.1, 0.9, 0.3, 0.4])
    tgt = t([0.4, 0.5, 0.3, 0.1], [0.1, 0.9, 0.3, 0.4])
    out = l1_box_loss(pred, tgt)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out, t([0.1, 0.0, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]))


def test_giou_box_loss_hand_values():
    # identical; disjoint [0,0,.2,.2] vs [.6,.6,.8,.8]; overlapping [0,0,.4,.4] vs [.2,.2,.6,.6]
    pred = t([0.3, 0.3, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2], [0.2, 0.2, 0.4, 0.4])
    tgt = t([0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.4, 0.4, 0.4, 0.4])
    out = giou_box_loss(pred, tgt)
    disjoint = 1 - (0.0 - (0.64 - 0.08) / 0.64)  # 1.875
    iou = 0.04 / 0.28
    overlap = 1 - (iou - (0.36 - 0.28) / 0.36)
    assert out.shape == (3,)
    # torchvision adds eps=1e-7 to the union: allow a few 1e-6
    torch.testing.assert_close(out, torch.tensor([0.0, disjoint, overlap], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert abs(disjoint - 1.875) < 1e-12


def test_vfl_plus_positive_and_negative():
    logits = t([0.5, 0.5, -1.2], [2.0, -0.3, 0.0])
    quality = t([0.7, 0.9, 0.0], [1.0, 0.4, 0.8])
    pos = torch.tensor([[True, False, False], [True, True, False]])
    out = vfl_plus_loss(logits, quality, pos, gamma=1.5)

    def bce(x, s):
        p = sig(x)
        return -(s * math.log(p) + (1 - s) * math.log(1 - p))

    def neg(x):
        p = sig(x)
        return p ** 1.5 * -math.log(1 - p)

    expected = t([bce(0.5, 0.7), neg(0.5), neg(-1.2)], [bce(2.0, 1.0), bce(-0.3, 0.4), neg(0.0)])
    torch.testing.assert_close(out, expected)
    # quality of negatives is ignored (the 0.9 and 0.8 above); hand check of one number
    assert abs(neg(0.0) - 0.5 ** 1.5 * math.log(2)) < 1e-12


def test_vfl_plus_stable_for_large_logits():
    logits = torch.tensor([[60.0, -60.0, 60.0, -60.0]], requires_grad=True)
    quality = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    pos = torch.tensor([[True, True, False, False]])
    out = vfl_plus_loss(logits, quality, pos)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.detach(), torch.tensor([[0.0, 0.0, 60.0, 0.0]]))
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def qfl_hand(x, target, gamma=2.0):
    s = sig(x)
    return -abs(target - s) ** gamma * ((1 - target) * math.log(1 - s) + target * math.log(s))


def test_quality_focal_loss_hand_values():
    logits = t([0.3, -0.7, 1.5])
    targets = t([0.6, 0.0, 0.9])
    out = quality_focal_loss(logits, targets, gamma=2.0)
    expected = [qfl_hand(0.3, 0.6), qfl_hand(-0.7, 0.0), qfl_hand(1.5, 0.9)]
    torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float64))
    # negative: s^2 * -log(1 - s)
    s = sig(-0.7)
    assert abs(expected[1] - s * s * -math.log(1 - s)) < 1e-12


def test_quality_focal_loss_zero_when_prediction_equals_target():
    x = math.log(0.6 / 0.4)  # sigmoid(x) = 0.6
    out = quality_focal_loss(t([x]), t([0.6]))
    assert abs(out.item()) < 1e-12


def test_multi_target_qfl_two_classes_one_class_and_teacher_only():
    logits = t([0.2, -0.4, 1.0], [0.2, -0.4, 1.0], [0.2, -0.4, 1.0])
    target_a = t([0.6, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0])
    # row 0: teacher matched a GT of another class (IoU 0.8); row 1: same class (0.9);
    # row 2: only the teacher's label
    target_b = t([0.0, 0.8, 0.0], [0.9, 0.0, 0.0], [0.0, 0.8, 0.0])
    out = multi_target_quality_focal_loss(logits, target_a, target_b, gamma=2.0)
    two = [qfl_hand(0.2, 0.6), qfl_hand(-0.4, 0.8), qfl_hand(1.0, 0.0)]
    one = [qfl_hand(0.2, 0.6), qfl_hand(-0.4, 0.0), qfl_hand(1.0, 0.0)]
    teacher = [qfl_hand(0.2, 0.0), qfl_hand(-0.4, 0.8), qfl_hand(1.0, 0.0)]
    torch.testing.assert_close(out, t(two, one, teacher))
    # same-class case reduces to Eq. 2 with the student's target
    torch.testing.assert_close(out[1], quality_focal_loss(logits[1], target_a[1]))


def test_multi_target_qfl_explicit_mask_keeps_student_zero_iou_target():
    logits = t([0.2, -0.4])
    out = multi_target_quality_focal_loss(logits, t([0.0, 0.0]), t([0.9, 0.0]),
                                          mask_a=torch.tensor([[True, False]]))
    torch.testing.assert_close(out, t([qfl_hand(0.2, 0.0), qfl_hand(-0.4, 0.0)]))


def test_box_ops_helpers():
    b1 = t([0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.3, 0.3])
    b2 = t([0.2, 0.2, 0.6, 0.6], [0.6, 0.6, 0.8, 0.8], [0.1, 0.1, 0.3, 0.3])
    torch.testing.assert_close(paired_box_iou(b1, b2), torch.tensor([1 / 7, 0.0, 1.0], dtype=torch.float64))
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()
    assert inverse_sigmoid(torch.tensor([1.0])).item() == pytest.approx(math.log(1 / 1e-5))
