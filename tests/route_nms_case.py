"""A hand-made NMS case for evaluating a training route with class-wise NMS (Mr. DETR's and
LoRA-DETR's route-evaluation tests share it)."""
import torch


def nms_case(num_queries, num_classes):
    """Hand-made last-layer predictions of a route, two images; every other (query, class) has a
    logit below -9, so only the listed pairs can be among the top 4. Boxes are normalised cxcywh.

    Image 0: q0 box A class 0 (logit 3); q1 = A shifted by 0.02 (IoU 0.82 with A) class 0 (2): suppressed;
    q2 = q1's box class 1 (1.5): kept, another class; q3 far box B class 0 (1); q4 = A shifted by 0.09
    (IoU 0.38) class 0 (0.5): kept. Image 1: q0 box C class 2 (2); q1 = C class 2 (1): suppressed;
    q2 = C shifted by 0.06 (IoU 0.67) class 2 (0.8): suppressed; q3 = C class 3 (0.5); q4 far D class 1
    (0); q5 = C shifted by 0.12 (IoU 0.43) class 2 (-0.5): kept.
    Returns logits, boxes and per image the kept (query, class) in the order expected (score descending)."""
    logits = -10.0 - 0.001 * torch.arange(2 * num_queries * num_classes, dtype=torch.float32).view(2, num_queries, num_classes)
    boxes = torch.tensor([0.1, 0.1, 0.02, 0.02]).repeat(2, num_queries, 1)
    boxes[:, :, 0] += 0.03 * torch.arange(num_queries)  # tiny, far apart
    a, b = [0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]
    c, d = [0.5, 0.5, 0.3, 0.3], [0.2, 0.8, 0.1, 0.1]
    shift = lambda box, dx: [box[0] + dx] + box[1:]  # noqa: E731
    image0 = [(a, 0, 3.0), (shift(a, 0.02), 0, 2.0), (shift(a, 0.02), 1, 1.5), (b, 0, 1.0), (shift(a, 0.09), 0, 0.5)]
    image1 = [(c, 2, 2.0), (c, 2, 1.0), (shift(c, 0.06), 2, 0.8), (c, 3, 0.5), (d, 1, 0.0), (shift(c, 0.12), 2, -0.5)]
    for i, entries in enumerate((image0, image1)):
        for q, (box, cls, logit) in enumerate(entries):
            boxes[i, q] = torch.tensor(box)
            logits[i, q, cls] = logit
    return logits, boxes, [[(0, 0), (2, 1), (3, 0), (4, 0)], [(0, 2), (3, 3), (4, 1), (5, 2)]]
