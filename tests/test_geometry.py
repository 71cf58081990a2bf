"""Hand-computed geometry of the shared core: the two-stage encoder proposals (Deformable DETR Sec. A.4:
pixel centres normalised by the valid extent, size 0.05 * 2^level, valid only inside (0.01, 0.99) and
off the padding), the encoder's reference points with valid ratios (Deformable DETR's
``get_reference_points``), and the sine embeddings (DETR Sec. A.4 with Deformable DETR's
normalisation; DAB / DINO's box embedding). Every expected value is written out entry by entry in
Python floats."""
import math

import pytest

import torch

from detr_plus.layers import PositionEmbeddingSine, box_sine_embedding
from detr_plus.modeling import DeformableEncoder, EncoderState
from detr_plus.modeling.transformer import DeformableTransformer
from model_utils import build, tiny_model_config

# Two images, three levels of (h, w); image 1 is padded: its valid (h, w) per level below.
SHAPES = [(3, 60), (4, 5), (2, 3)]
VALID = [[(3, 60), (4, 5), (2, 3)], [(2, 45), (3, 4), (1, 2)]]


def padding_masks():
    """Per level a (2, h, w) bool mask, True on padding (bottom rows / right columns of image 1)."""
    masks = []
    for level, (h, w) in enumerate(SHAPES):
        mask = torch.zeros(2, h, w, dtype=torch.bool)
        for b in range(2):
            vh, vw = VALID[b][level]
            mask[b, vh:, :] = True
            mask[b, :, vw:] = True
        masks.append(mask)
    return masks


def state_of(masks, d_model=4):
    shapes = torch.tensor(SHAPES)
    start = torch.tensor([0, 180, 200])
    memory = torch.arange(2 * 206 * d_model, dtype=torch.float32).view(2, 206, d_model) + 1.0
    valid_ratios = torch.stack([DeformableTransformer.valid_ratio(m) for m in masks], 1)
    return EncoderState(memory, shapes, start, valid_ratios, torch.cat([m.flatten(1) for m in masks], 1))


def test_valid_ratios_are_the_unpadded_fractions():
    ratios = torch.stack([DeformableTransformer.valid_ratio(m) for m in padding_masks()], 1)
    expected = [[[vw / w, vh / h] for (vh, vw), (h, w) in zip(VALID[b], SHAPES)] for b in range(2)]
    torch.testing.assert_close(ratios, torch.tensor(expected), rtol=0, atol=1e-7)


def test_encoder_proposals_hand_values():
    """Position (i, j) of level l: box (cx, cy, s, s) = ((j + 0.5) / valid_w, (i + 0.5) / valid_h,
    0.05 * 2^l, 0.05 * 2^l); valid iff off the padding and every coordinate in (0.01, 0.99) (the
    60-wide level's first and last columns are not: 0.5 / 60 < 0.01, 59.5 / 60 > 0.99); logits are
    log(p / (1 - p)) of the valid ones, +inf elsewhere, where the memory is zeroed."""
    masks = padding_masks()
    state = state_of(masks)
    transformer = build(tiny_model_config("two_stage").transformer)
    logits, memory, valid = transformer.encoder_proposals(state)
    expected_valid, expected_logits = [], []
    for b in range(2):
        rows_valid, rows_logits = [], []
        for level, (h, w) in enumerate(SHAPES):
            vh, vw = VALID[b][level]
            size = 0.05 * 2 ** level
            for i in range(h):
                for j in range(w):
                    box = [(j + 0.5) / vw, (i + 0.5) / vh, size, size]
                    ok = i < vh and j < vw and all(0.01 < v < 0.99 for v in box)
                    rows_valid.append(ok)
                    rows_logits.append([math.log(v / (1 - v)) if ok else math.inf for v in box])
        expected_valid.append(rows_valid)
        expected_logits.append(rows_logits)
    expected_valid = torch.tensor(expected_valid)
    assert torch.equal(valid, expected_valid)
    assert not expected_valid[0, 0] and not expected_valid[0, 59] and expected_valid[0, 1]  # the border columns
    assert expected_valid[1].sum() < expected_valid[0].sum()  # the padding
    torch.testing.assert_close(logits, torch.tensor(expected_logits), rtol=0, atol=1e-5)
    torch.testing.assert_close(memory, state.memory * expected_valid[..., None], rtol=0, atol=0)


def test_encoder_reference_points_with_valid_ratios_hand_values():
    """Reference point of position (i, j) of level l as seen from level l': ((j + 0.5) / (r_l^x w_l)
    * r_l'^x, (i + 0.5) / (r_l^y h_l) * r_l'^y), r the valid ratios (Deformable DETR's encoder)."""
    masks = padding_masks()
    ratios = torch.stack([DeformableTransformer.valid_ratio(m) for m in masks], 1)
    points = DeformableEncoder.reference_points(torch.tensor(SHAPES), ratios)
    expected = []
    for b in range(2):
        r = ratios[b].tolist()
        rows = []
        for level, (h, w) in enumerate(SHAPES):
            for i in range(h):
                for j in range(w):
                    x, y = (j + 0.5) / (r[level][0] * w), (i + 0.5) / (r[level][1] * h)
                    rows.append([[x * r[other][0], y * r[other][1]] for other in range(len(SHAPES))])
        expected.append(rows)
    torch.testing.assert_close(points, torch.tensor(expected), rtol=0, atol=1e-6)
    # An unpadded image's points are the pixel centres over the level's size, the same for every level.
    torch.testing.assert_close(points[0, 181, 2], torch.tensor([1.5 / 5, 0.5 / 4]), rtol=0, atol=1e-7)


def sine(coordinate, k, num_feats, temperature=10000):
    """Channel k of DETR's sine encoding of one coordinate: sin for even k, cos for odd k, at the
    frequency 1 / temperature^(2 floor(k / 2) / num_feats)."""
    angle = coordinate / temperature ** (2 * (k // 2) / num_feats)
    return math.sin(angle) if k % 2 == 0 else math.cos(angle)


def test_position_embedding_sine_is_the_detr_formula():
    """DETR Sec. A.4 / Deformable DETR: channels [y (F), x (F)] of an unpadded pixel (i, j) are
    sine(2 pi (i + 1 - 0.5) / (valid_h + 1e-6), k) and sine(2 pi (j + 1 - 0.5) / (valid_w + 1e-6), k): positions
    count valid pixels and are normalised by the valid extent, so a padded image's pixels get the
    encoding they would have unpadded at that size (padded pixels are masked and not checked)."""
    num_feats = 6
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, 2:, :] = True
    mask[1, :, 3:] = True
    pos = PositionEmbeddingSine(num_pos_feats=num_feats)(mask)
    assert pos.shape == (2, 2 * num_feats, 3, 4)
    for b in range(2):
        valid_h, valid_w = (3, 4) if b == 0 else (2, 3)
        for i in range(valid_h):
            for j in range(valid_w):
                y = (i + 1 - 0.5) / (valid_h + 1e-6) * 2 * math.pi
                x = (j + 1 - 0.5) / (valid_w + 1e-6) * 2 * math.pi
                expected = [sine(y, k, num_feats) for k in range(num_feats)] + [sine(x, k, num_feats) for k in range(num_feats)]
                torch.testing.assert_close(pos[b, :, i, j], torch.tensor(expected), rtol=0, atol=1e-5)


def test_box_sine_embedding_is_the_dino_formula():
    """DAB / DINO's ``gen_sineembed_for_position``: a box (cx, cy, w, h) -> [y (F), x (F), w (F), h (F)],
    each channel sine(2 pi v, k) with temperature 10000."""
    num_feats = 8
    boxes = torch.tensor([[0.25, 0.6, 0.1, 0.3], [0.9, 0.05, 0.5, 0.02]])
    embedded = box_sine_embedding(boxes, num_feats)
    for box, got in zip(boxes.tolist(), embedded):
        cx, cy, w, h = (2 * math.pi * v for v in box)
        expected = [sine(v, k, num_feats) for v in (cy, cx, w, h) for k in range(num_feats)]
        torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-5)


def test_paired_giou_loss_equals_torchvision_values_and_gradients():
    """Overlapping, touching, disjoint (on one axis and on both) and identical pairs; a hand value:
    (0,0,2,2) vs (1,1,3,3): IoU 1/7, enclosing 9, union 7 -> 1 - (1/7 - 2/9)."""
    from torchvision.ops import generalized_box_iou_loss

    from detr_plus.layers.box_ops import paired_giou_loss

    boxes1 = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0.2, 0.3, 0.6, 0.9]], dtype=torch.float64)
    boxes2 = torch.tensor([[1.0, 1, 3, 3], [1, 0, 2, 1], [0.5, 2, 1.5, 3], [2, 2, 3, 3], [0.2, 0.3, 0.6, 0.9]], dtype=torch.float64)
    ours_inputs = [boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()]
    theirs_inputs = [boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()]
    ours = paired_giou_loss(*ours_inputs)
    theirs = generalized_box_iou_loss(*theirs_inputs, reduction="none")
    assert ours[0].item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-6)
    assert ours[4].item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    weights = torch.arange(1.0, 6.0, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), ours_inputs), torch.autograd.grad((theirs * weights).sum(), theirs_inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
