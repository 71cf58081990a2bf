#!/usr/bin/env python
"""How many confident detections each ground-truth object gets: the duplicates a one-to-one
(NMS-free) head must score low, measured per run from its COCO results file.

    python tools/duplicate_report.py --gt datasets/shapes/annotations/instances_val.json \\
        NAME=output/RUN/inference/coco_instances_results.json [NAME=...] [--score 0.3] [--iou 0.5] \\
        [--output output/duplicates.png]

For every GT object: the detections of its class whose IoU with it is at least ``--iou``; the
highest-scoring one is the hit, the next the best duplicate. Printed per run (a Markdown table):
the share of objects hit with score >= ``--score``, the confident detections per object beyond
the first (duplicates), the mean score of the hit and of the best duplicate, and their margin;
then how the predictions stack on the objects, at any score: the same-class detections per object
(IoU >= ``--iou``) and how close the best duplicate's box is to the hit's (box IoU; a near copy
is what a one-to-one head can hardly score apart). The PNG shows the distribution of the best
duplicate's score per run. Counts are among the detections in the file (Detectron2 writes the
top 100 per image).
"""
import argparse
import json
import os
from collections import defaultdict
from typing import NamedTuple

import torch
from torchvision.ops import box_convert, box_iou


def object_scores(gt_boxes, gt_classes, boxes, scores, classes, iou_threshold=0.5):
    """(G, D) -> for each of G objects the scores of the same-class detections overlapping it by
    at least ``iou_threshold``, highest first, as a (G, D) tensor padded with 0 (boxes xyxy)."""
    if len(gt_boxes) == 0 or len(boxes) == 0:
        return scores.new_zeros(len(gt_boxes), max(len(boxes), 1))
    overlaps = (box_iou(gt_boxes, boxes) >= iou_threshold) & (gt_classes[:, None] == classes[None, :])
    return torch.where(overlaps, scores[None, :], 0.0).sort(dim=1, descending=True).values


class ObjectMatches(NamedTuple):
    """Per ground-truth object of one run: ``scores`` (G, >= 2), its same-class overlapping
    detections' scores, highest first, padded with 0; ``stack`` (G,), how many there are at any
    score; ``twin_iou`` (G,), the box IoU between the hit and the best duplicate (nan without one)."""

    scores: torch.Tensor
    stack: torch.Tensor
    twin_iou: torch.Tensor


def hit_twins(gt_boxes, gt_classes, boxes, scores, classes, iou_threshold=0.5):
    """(G, D) -> for each of G objects the number of same-class detections overlapping it by at
    least ``iou_threshold`` (any score) and the box IoU between the two best-scoring of them (nan
    with fewer than two); boxes xyxy."""
    overlaps = (box_iou(gt_boxes, boxes) >= iou_threshold) & (gt_classes[:, None] == classes[None, :])
    stack = overlaps.sum(1)
    twin_iou = torch.full((len(gt_boxes),), float("nan"))
    if len(boxes) >= 2:
        best_two = torch.where(overlaps, scores[None, :], -1.0).topk(2, dim=1).indices
        pairs = box_iou(boxes[best_two[:, 0]], boxes[best_two[:, 1]]).diagonal()
        twin_iou = torch.where(stack >= 2, pairs, twin_iou)
    return stack, twin_iou


def summarize_stacks(matches: ObjectMatches):
    """Same-class detections per object at any score, and the hit-to-best-duplicate box IoU
    (median and mean over the objects that have a duplicate)."""
    twins = matches.twin_iou[~matches.twin_iou.isnan()]
    return {
        "stack_per_object": matches.stack.float().mean().item(),
        "twin_iou_median": twins.median().item() if len(twins) else float("nan"),
        "twin_iou_mean": twins.mean().item() if len(twins) else float("nan"),
    }


def summarize(per_object, score_threshold=0.3):
    """Of per-object scores with at least 2 columns (``load_run``'s): the share of objects hit (top
    score >= threshold), confident duplicates per object (detections >= threshold beyond the
    first), and the mean top and second score and their margin."""
    confident = (per_object >= score_threshold).sum(1)
    second = per_object[:, 1]
    return {
        "objects": len(per_object),
        "hit": (confident > 0).float().mean().item(),
        "duplicates_per_object": (confident - 1).clamp(min=0).float().mean().item(),
        "objects_with_duplicate": (confident > 1).float().mean().item(),
        "top_score": per_object[:, 0].mean().item(),
        "duplicate_score": second.mean().item(),
        "margin": (per_object[:, 0] - second).mean().item(),
    }


def load_run(gt, results_file, iou_threshold) -> ObjectMatches:
    """The ``ObjectMatches`` of one COCO results file against the GT json ``gt``."""
    detections = defaultdict(list)
    with open(results_file) as f:
        for d in json.load(f):
            detections[d["image_id"]].append(d)
    objects = defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            objects[a["image_id"]].append(a)
    rows, stacks, twins = [], [], []
    for image in gt["images"]:
        anns, dets = objects[image["id"]], detections[image["id"]]
        if not anns:
            continue
        gt_boxes = box_convert(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32), "xywh", "xyxy")
        boxes = box_convert(torch.tensor([d["bbox"] for d in dets], dtype=torch.float32).view(-1, 4), "xywh", "xyxy")
        scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
        gt_classes = torch.tensor([a["category_id"] for a in anns])
        classes = torch.tensor([d["category_id"] for d in dets], dtype=torch.long)
        rows.append(object_scores(gt_boxes, gt_classes, boxes, scores, classes, iou_threshold)[:, :10])
        stack, twin_iou = hit_twins(gt_boxes, gt_classes, boxes, scores, classes, iou_threshold)
        stacks.append(stack)
        twins.append(twin_iou)
    if not rows:
        raise ValueError("the ground truth has no (non-crowd) objects: nothing to report")
    width = max(2, *(r.shape[1] for r in rows))  # at least the hit and one duplicate column
    scores = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1])) for r in rows])
    return ObjectMatches(scores, torch.cat(stacks), torch.cat(twins))


def plot(runs, path, score_threshold):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, matches in runs.items():
        ax.hist(matches.scores[:, 1].numpy(), bins=20, range=(0, 1), histtype="step", linewidth=1.5, label=name)
    ax.axvline(score_threshold, color="gray", linestyle=":")
    ax.set_xlabel("score of each object's best duplicate (0: none)")
    ax.set_ylabel("objects")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=RESULTS_JSON")
    parser.add_argument("--gt", required=True, help="COCO-format ground truth json")
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--score", type=float, default=0.3, help="a detection at or above this score is confident")
    parser.add_argument("--output", default="output/duplicates.png")
    args = parser.parse_args(argv)
    with open(args.gt) as f:
        gt = json.load(f)
    runs = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep or not os.path.isfile(path):
            parser.error(f"{spec!r}: expected NAME=RESULTS_JSON with an existing file")
        runs[name] = load_run(gt, path, args.iou)
    print(f"| run | objects | hit (score >= {args.score}) | duplicates / object | objects with a duplicate | "
          "mean hit score | mean best-duplicate score | mean margin |")
    print("|---|---|---|---|---|---|---|---|")
    summaries = {}
    for name, matches in runs.items():
        s = summaries[name] = {**summarize(matches.scores, args.score), **summarize_stacks(matches)}
        print(f"| {name} | {s['objects']} | {s['hit']:.1%} | {s['duplicates_per_object']:.2f} | "
              f"{s['objects_with_duplicate']:.1%} | {s['top_score']:.3f} | {s['duplicate_score']:.3f} | {s['margin']:.3f} |")
    print(f"\n| run | detections / object, any score (IoU >= {args.iou}) | hit-to-duplicate box IoU: median | mean |")
    print("|---|---|---|---|")
    for name, s in summaries.items():
        print(f"| {name} | {s['stack_per_object']:.2f} | {s['twin_iou_median']:.3f} | {s['twin_iou_mean']:.3f} |")
    plot(runs, args.output, args.score)
    print(f"best-duplicate score histogram: {args.output}")
    return summaries


if __name__ == "__main__":
    main()
