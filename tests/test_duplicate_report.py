"""tools/duplicate_report.py: per-object hit and duplicate scores, by hand on made-up detections,
and the command line on a COCO ground truth and results file written here."""
import importlib.util
import json

import pytest
import torch

from conftest import REPO

_spec = importlib.util.spec_from_file_location("duplicate_report", REPO / "tools" / "duplicate_report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_object_scores_and_summary_by_hand():
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gt_classes = torch.tensor([1, 2])
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # the hit of object 0
        [1.0, 0.0, 11.0, 10.0],   # IoU 9/11 with object 0: a duplicate
        [0.0, 0.0, 10.0, 10.0],   # same place, other class: not object 0's
        [0.0, 0.0, 10.0, 30.0],   # IoU 1/3: not a duplicate at 0.5
        [50.0, 50.0, 60.0, 60.0],  # the hit of object 1
    ])
    scores = torch.tensor([0.9, 0.4, 0.8, 0.7, 0.2])
    classes = torch.tensor([1, 1, 2, 1, 2])
    per_object = report.object_scores(gt_boxes, gt_classes, boxes, scores, classes, iou_threshold=0.5)
    torch.testing.assert_close(per_object[:, :2], torch.tensor([[0.9, 0.4], [0.2, 0.0]]), rtol=0, atol=0)
    s = report.summarize(per_object, score_threshold=0.3)
    assert s["objects"] == 2
    assert s["hit"] == 0.5  # object 1's only detection scores 0.2
    assert s["duplicates_per_object"] == 0.5 and s["objects_with_duplicate"] == 0.5
    assert abs(s["top_score"] - 0.55) < 1e-6 and abs(s["duplicate_score"] - 0.2) < 1e-6
    assert abs(s["margin"] - 0.35) < 1e-6
    stack, twin_iou = report.hit_twins(gt_boxes, gt_classes, boxes, scores, classes, iou_threshold=0.5)
    assert stack.tolist() == [2, 1]  # object 0: the hit and its duplicate; the 1/3-IoU box does not count
    assert abs(twin_iou[0].item() - 9 / 11) < 1e-6 and twin_iou[1].isnan()  # object 1 has no duplicate
    matches = report.ObjectMatches(per_object, stack, twin_iou)
    assert report.summarize_stacks(matches) == {"stack_per_object": 1.5, "twin_iou_median": twin_iou[0].item(),
                                                "twin_iou_mean": twin_iou[0].item()}


def test_stacks_without_detections_or_with_one():
    gt_boxes, gt_classes = torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([1])
    for boxes in (torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 4.0, 4.0]])):
        n = len(boxes)
        stack, twin_iou = report.hit_twins(gt_boxes, gt_classes, boxes, torch.full((n,), 0.5), torch.ones(n, dtype=torch.long))
        assert stack.tolist() == [n] and twin_iou.isnan().all()


def test_command_line_table_and_png(tmp_path, capsys):
    gt = {
        "images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "circle"}],
    }
    one_to_one = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
                  {"image_id": 2, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.8}]
    with_duplicates = one_to_one + [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 11], "score": 0.6}]
    paths = {}
    for name, results in (("gt", gt), ("clean", one_to_one), ("dup", with_duplicates)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(results))
    png = tmp_path / "dup.png"
    summaries = report.main(["--gt", str(paths["gt"]), f"clean={paths['clean']}", f"dup={paths['dup']}", "--output", str(png)])
    assert summaries["clean"]["duplicates_per_object"] == 0.0 and summaries["dup"]["duplicates_per_object"] == 0.5
    assert abs(summaries["dup"]["duplicate_score"] - 0.3) < 1e-6  # 0.6 for one object of two
    out = capsys.readouterr().out
    assert "| dup | 2 | 100.0% | 0.50 | 50.0% |" in out and png.stat().st_size > 0
    # the duplicate [0, 0, 10, 11] of image 1's object: IoU 100/110 with the hit
    assert summaries["dup"]["stack_per_object"] == 1.5 and abs(summaries["dup"]["twin_iou_median"] - 10 / 11) < 1e-6
    assert "| dup | 1.50 | 0.909 | 0.909 |" in out


def test_ground_truth_without_objects_is_a_clear_error(tmp_path):
    gt = {"images": [{"id": 1, "width": 8, "height": 8}], "annotations": [], "categories": []}
    results = tmp_path / "r.json"
    results.write_text("[]")
    with pytest.raises(ValueError, match="no .*objects"):
        report.load_run(gt, results, 0.5)


def test_one_detection_per_image_still_has_a_duplicate_column(tmp_path):
    gt = {"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}]}
    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.7}]))
    matches = report.load_run(gt, results, 0.5)
    torch.testing.assert_close(matches.scores, torch.tensor([[0.7, 0.0]]), rtol=0, atol=0)
    assert matches.stack.tolist() == [1] and matches.twin_iou.isnan().all()
