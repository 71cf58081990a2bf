#!/usr/bin/env python
"""How many of the primary route's queries sit on each ground-truth object, layer by layer: where
a one-to-one decoder spreads its queries out or stacks them, and how far apart (in box and in
score) it keeps the two best of each stack.

    python tools/query_stacks.py --config-file CONFIG --checkpoint CKPT [--images 200] \
        [--draw 4 --output output/query_stacks.png] [key=value ...]

Runs the primary pass (no training routes) on the test set with its annotations. For the
initial boxes (a two-stage model's top-k proposals) and every decoder layer, per object: the
queries whose box overlaps it by IoU >= 0.5 (class-agnostic, any score); among them, the two that
score the object's class highest (the hit and its best duplicate): their box IoU ("twins" when
near 1) and their score margin. ``--draw N`` draws the first N images with the last layer's
queries on each object, shaded by score.
"""
import argparse
import statistics
from pathlib import Path

import torch
from torchvision.ops import box_convert, box_iou


def stack_stats(gt_boxes, gt_labels, boxes, logits=None, iou_threshold=0.5):
    """One image, one stage: ``gt_boxes`` (G, 4) and ``boxes`` (Q, 4) normalized cxcywh, ``logits``
    (Q, C) or None (proposals: boxes only). Returns (queries on each object (G,), and for the objects
    with two or more: the hit-to-duplicate box IoU and score margin, each a list)."""
    gt_xyxy, xyxy = box_convert(gt_boxes, "cxcywh", "xyxy"), box_convert(boxes, "cxcywh", "xyxy")
    near = box_iou(gt_xyxy, xyxy) >= iou_threshold
    stack = near.sum(1)
    if logits is None or len(boxes) < 2:
        return stack, [], []
    scores = logits.sigmoid()[:, gt_labels].T  # (G, Q): each query's score for the object's class
    best_two = torch.where(near, scores, -1.0).topk(2, dim=1)
    has_two = stack >= 2
    twin_iou = box_iou(xyxy[best_two.indices[:, 0]], xyxy[best_two.indices[:, 1]]).diagonal()
    margin = best_two.values[:, 0] - best_two.values[:, 1]
    return stack, twin_iou[has_two].tolist(), margin[has_two].tolist()


def drawing(inputs, image_size, target, boxes, logits):
    """What ``draw`` shows of one image: the image, its GT boxes, and the queries (``boxes`` (Q, 4)
    normalized cxcywh, ``logits`` (Q, C)) on any object, with their top class score; pixels."""
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    gt_xyxy = box_convert(target["boxes"].cpu(), "cxcywh", "xyxy") * scale
    xyxy = box_convert(boxes.detach().cpu(), "cxcywh", "xyxy") * scale
    on_object = (box_iou(gt_xyxy, xyxy) >= 0.5).any(0)
    scores = logits.detach().cpu().sigmoid().max(-1).values
    image = inputs["image"][:, :h, :w].permute(1, 2, 0).byte().numpy()
    return image, gt_xyxy, xyxy[on_object], scores[on_object]


def draw(images, path, title=None):
    """``images``: (image HWC uint8, GT boxes xyxy px, query boxes xyxy px, query scores) per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.2), squeeze=False)
    for ax, (image, gt_boxes, boxes, scores) in zip(axes[0], images):
        ax.imshow(image)
        for (x0, y0, x1, y1), score in zip(boxes.tolist(), scores.tolist()):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", alpha=0.15 + 0.85 * score, lw=1))
        for x0, y0, x1, y1 in gt_boxes.tolist():
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.5, ls="--"))
        ax.set_title(f"{len(boxes)} queries on {len(gt_boxes)} objects", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=int, default=200, help="test images to read (from the first)")
    parser.add_argument("--draw", type=int, default=0, metavar="N", help="draw the first N images")
    parser.add_argument("--output", default="output/query_stacks.png", help="the --draw PNG")
    parser.add_argument("--title", help="the --draw PNG's title (default: none)")
    parser.add_argument("opts", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    # the test mapper with annotations kept (the test augmentations are unchanged)
    cfg.dataloader.test.mapper.update(is_train=True, unreadable="raise")
    model = instantiate(cfg.model)
    DetectionCheckpointer(model).load(args.checkpoint)
    model.eval()
    stages, drawn = None, []
    seen = 0
    for batch in instantiate(cfg.dataloader.test):
        run = model.detection_pass(batch, match=False)
        initial = run.selection.queries.reference  # 2-d reference points (single-stage) have no box to count
        predicted = ([(initial, None)] if initial.shape[-1] == 4 else []) + [(p.boxes, p.logits) for p in run.decoder.layers]
        stages = stages or [([], [], []) for _ in predicted]
        for b, target in enumerate(run.targets):
            for (boxes, logits), (stacks, twins, margins) in zip(predicted, stages):
                stack, twin, margin = stack_stats(target["boxes"], target["labels"], boxes[b],
                                                  None if logits is None else logits[b])
                stacks += stack.tolist()
                twins += twin
                margins += margin
            if len(drawn) < args.draw:
                last_boxes, last_logits = predicted[-1]
                drawn.append(drawing(batch[b], run.image_sizes[b], target, last_boxes[b], last_logits[b]))
        seen += len(batch)
        if seen >= args.images:
            break
    if not stages or not stages[-1][0]:
        raise SystemExit(f"no annotated objects in the first {args.images} test images of {args.config_file}")
    if drawn:
        draw(drawn, args.output, args.title)
        print(f"queries on the objects of {len(drawn)} images: {args.output}")
    print("| stage | queries / object (IoU >= 0.5) | hit-to-duplicate box IoU, median | score margin, mean |")
    print("|---|---|---|---|")
    names = [f"decoder layer {i}" for i in range(len(model.transformer.decoder.layers))]
    names = ["initial boxes (two-stage: the top-k proposals)"] * (len(stages) - len(names)) + names
    for name, (stacks, twins, margins) in zip(names, stages):
        twin = f"{statistics.median(twins):.3f}" if twins else "-"
        margin = f"{statistics.mean(margins):.3f}" if margins else "-"
        print(f"| {name} | {statistics.mean(stacks):.2f} | {twin} | {margin} |")
    return stages


if __name__ == "__main__":
    main()
