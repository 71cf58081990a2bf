"""Inference post-processing of the shared ``DeformableDETR`` (Deformable DETR's ``PostProcess``): the
top-k (query, class) scores of the last decoder layer, each kept with ITS query's box, converted to
corner form and scaled to the original image size. The decoder output is replaced by hand-made
predictions; the expected detections are computed in plain Python."""
import math

import pytest
import torch

from detr_plus.modeling import LayerPredictions
from model_utils import NUM_CLASSES, build_tiny_model, synthetic_batch

NUM_QUERIES, K = 20, 12


def hand_made_predictions(batch_size=2, seed=0):
    """Distinct logits (so the ranking is unique; every query's best class varies) and distinct boxes,
    one of them reaching past the right and bottom borders (clipped)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randperm(batch_size * NUM_QUERIES * NUM_CLASSES, generator=gen).float().view(batch_size, NUM_QUERIES, NUM_CLASSES)
    logits = (logits - logits.mean()) / 15
    centres = torch.rand(batch_size, NUM_QUERIES, 2, generator=gen) * 0.6 + 0.2
    sizes = torch.rand(batch_size, NUM_QUERIES, 2, generator=gen) * 0.2 + 0.05
    boxes = torch.cat([centres, sizes], -1)
    best = logits.max(-1).values.argmax(-1)  # the top query of each image gets the border box
    boxes[torch.arange(batch_size), best] = torch.tensor([0.9, 0.95, 0.3, 0.2])  # x1 = 1.05 > 1, y1 = 1.05 > 1
    return logits, boxes


def expected_detections(logits, boxes, height, width):
    """[(score, class, (x0, y0, x1, y1))] of one image: the K best of all (query, class) pairs by
    sigmoid(logit), each with its own query's box in original pixels, clipped to the image."""
    pairs = sorted(((1 / (1 + math.exp(-logits[q][c])), q, c) for q in range(len(logits)) for c in range(len(logits[0]))), reverse=True)
    out = []
    for score, q, c in pairs[:K]:
        cx, cy, w, h = boxes[q]
        corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        pixels = [min(max(v, 0.0), 1.0) * size for v, size in zip(corners, (width, height, width, height))]
        out.append((score, c, pixels))
    return out


@pytest.mark.parametrize("name", ["plain", "plusplus"])
def test_each_detection_keeps_its_own_querys_box_in_original_coordinates(name, monkeypatch):
    """The inputs say their original size (``height`` / ``width``) is 1.5 x 1.25 the tensor's: every kept
    detection is (score, class, box) of one and the same query (``expected_detections``), in score
    order, with the box in original pixels; one query's box is clipped at the right / bottom border."""
    model = build_tiny_model(name, num_queries=NUM_QUERIES).eval()
    model.select_box_nums_for_evaluation = K
    logits, boxes = hand_made_predictions()
    decode = model.transformer.decode

    def decode_with_hand_made_last_layer(*args, **kwargs):
        out = decode(*args, **kwargs)
        last = out.layers[-1]
        out.layers[-1] = LayerPredictions(logits, boxes, last.hidden, last.reference)
        return out

    monkeypatch.setattr(model.transformer, "decode", decode_with_hand_made_last_layer)
    batch = synthetic_batch(with_instances=False)
    for x in batch:
        x["height"], x["width"] = int(1.5 * x["image"].shape[1]), int(1.25 * x["image"].shape[2])
    with torch.no_grad():
        results = model(batch)
    clipped = 0
    for i, (result, x) in enumerate(zip(results, batch)):
        instances = result["instances"]
        assert instances.image_size == (x["height"], x["width"]) and len(instances) == K
        expected = expected_detections(logits[i].tolist(), boxes[i].tolist(), x["height"], x["width"])
        torch.testing.assert_close(instances.scores, torch.tensor([e[0] for e in expected]), rtol=0, atol=1e-6)
        assert instances.pred_classes.tolist() == [e[1] for e in expected]
        torch.testing.assert_close(instances.pred_boxes.tensor, torch.tensor([e[2] for e in expected]), rtol=0, atol=1e-3)
        clipped += sum(e[2][2] == x["width"] for e in expected)
    assert clipped >= 2  # each image's top query has the border box (the clip is exercised)
