"""tools/query_stacks.py: queries per object and the hit/duplicate pair, by hand."""
import importlib.util
import math

import torch

from conftest import REPO

_spec = importlib.util.spec_from_file_location("query_stacks", REPO / "tools" / "query_stacks.py")
stacks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stacks)


def logit(p):
    return math.log(p / (1 - p))


def test_stack_stats_by_hand():
    gt = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]])  # cxcywh
    labels = torch.tensor([1, 0])
    boxes = torch.tensor([
        [0.25, 0.25, 0.2, 0.2],   # on object 0
        [0.26, 0.25, 0.2, 0.2],   # on object 0, shifted by 0.01: IoU 0.19 / 0.21
        [0.25, 0.25, 0.6, 0.6],   # around object 0, IoU 1/9: not on it
        [0.75, 0.75, 0.2, 0.2],   # on object 1, alone
    ])
    logits = torch.full((4, 2), -10.0)
    logits[0, 1], logits[1, 1], logits[2, 1], logits[3, 0] = logit(0.8), logit(0.3), logit(0.95), logit(0.6)
    stack, twin_iou, margin = stacks.stack_stats(gt, labels, boxes, logits)
    assert stack.tolist() == [2, 1]  # the wide box does not count although it scores highest
    assert len(twin_iou) == 1 and abs(twin_iou[0] - 0.19 / 0.21) < 1e-5
    assert len(margin) == 1 and abs(margin[0] - 0.5) < 1e-5  # 0.8 - 0.3: the class-1 scores
    stack, twin_iou, margin = stacks.stack_stats(gt, labels, boxes)  # proposals: boxes only
    assert stack.tolist() == [2, 1] and twin_iou == [] and margin == []


def test_drawing_keeps_only_queries_on_objects(tmp_path):
    target = {"boxes": torch.tensor([[0.25, 0.25, 0.5, 0.5]]), "labels": torch.tensor([0])}
    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.26, 0.25, 0.5, 0.5], [0.8, 0.8, 0.1, 0.1]])
    logits = torch.tensor([[2.0], [0.0], [5.0]])
    inputs = {"image": torch.full((3, 24, 40), 128, dtype=torch.uint8)}  # padded beyond the 20 x 32 image
    image, gt_xyxy, xyxy, scores = stacks.drawing(inputs, (20, 32), target, boxes, logits)
    assert image.shape == (20, 32, 3)
    torch.testing.assert_close(gt_xyxy, torch.tensor([[0.0, 0.0, 16.0, 10.0]]))
    assert len(xyxy) == 2 and torch.allclose(scores, torch.tensor([2.0, 0.0]).sigmoid())  # the far box is left out
    png = tmp_path / "stacks.png"
    stacks.draw([(image, gt_xyxy, xyxy, scores)], png, title="t")
    assert png.stat().st_size > 0
