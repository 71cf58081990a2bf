"""ONNX export (issue #31): ``tools/export_onnx.py`` on a checkpoint of the baseline and of a method
(Mr. DETR: its routes are not in the graph), onnxruntime against PyTorch on the shapes validation
images, the graph against ``DeformableDETR.forward`` on images of other sizes than the traced one,
``tools/demo.py --onnx`` against the PyTorch demo, and the errors."""
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import demo  # noqa: E402
import export_onnx  # noqa: E402
from detr_plus.deploy import InferenceGraph, attention_implementation, match_detections  # noqa: E402

BASELINE = "configs/shapes/deformable_detr_tiny.py"
MR_DETR = "projects/mr_detr/configs/mr_detr_shapes_tiny.py"

pytestmark = pytest.mark.usefixtures("single_thread")


def random_checkpoint(config, path, seed=0):
    """A checkpoint of ``config``'s model with random weights."""
    torch.manual_seed(seed)
    model = instantiate(LazyConfig.load(str(REPO / config)).model)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def load_model(config, checkpoint):
    """The checkpoint's model as the export tool loads it (``tools/demo.py``'s checks and loading)."""
    args = export_onnx.parse_args(["--config-file", str(REPO / config), "--output", "x", f"train.init_checkpoint={checkpoint}"])
    return demo.build_predictor(args)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shapes_mini):
    """Both checkpoints exported with ``--check 3`` (which raises when onnxruntime disagrees)."""
    out = tmp_path_factory.mktemp("export")
    files = {}
    for name, config in (("baseline", BASELINE), ("mr_detr", MR_DETR)):
        checkpoint = random_checkpoint(config, out / f"{name}.pth")
        onnx_path = out / f"{name}.onnx"
        extra = ["--torch-export", str(out / f"{name}.pt2")] if name == "baseline" else []
        export_onnx.main(["--config-file", str(REPO / config), "--output", str(onnx_path), "--check", "3", *extra,
                          f"train.init_checkpoint={checkpoint}"])
        files[name] = (config, checkpoint, onnx_path)
    return files


def test_the_export_checks_itself_and_records_what_it_is(exported, capsys):
    _, checkpoint, path = exported["baseline"]
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {"num_classes": "4", "deformable_attention": "grid_sample", "size_divisibility": "32"}
    assert [i.name for i in model.graph.input] == ["image"]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["", "height", "width"]
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "classes"]
    assert any(node.op_type == "GridSample" for node in model.graph.node)


def test_a_methods_graph_is_its_baselines(exported):
    """Mr. DETR's checkpoint holds its routes' weights; the exported graph has exactly the baseline's
    weights (the same initializer shapes) and operators."""
    graphs = {name: onnx.load(path).graph for name, (_, _, path) in exported.items()}
    shapes = {name: sorted(tuple(i.dims) for i in g.initializer) for name, g in graphs.items()}
    assert shapes["mr_detr"] == shapes["baseline"]
    ops = {name: sorted(n.op_type for n in g.node) for name, g in graphs.items()}
    assert ops["mr_detr"] == ops["baseline"]
    state = torch.load(exported["mr_detr"][1], weights_only=False)["model"]
    assert any(k.startswith("variants.") for k in state)  # the routes were in the checkpoint


@pytest.mark.parametrize("height, width", [(96, 112), (128, 160), (200, 136)])
def test_onnxruntime_equals_the_models_forward_on_any_image_size(exported, height, width):
    """The graph was traced on 128 x 160 (the shapes test resize); images smaller, equal and larger,
    none of them a multiple of 32 but 128 x 160: onnxruntime gives ``DeformableDETR.forward``'s
    detections (its padding to 32 and masking inside the graph), boxes clipped to the image."""
    import onnxruntime

    config, checkpoint, path = exported["baseline"]
    model = load_model(config, checkpoint)
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height)) * 255
    with attention_implementation(model), torch.no_grad():
        instances = model([{"image": image}])[0]["instances"]
    got = dict(zip(("boxes", "scores", "classes"), map(torch.from_numpy, onnxruntime.InferenceSession(str(path)).run(None, {"image": image.numpy()}))))
    keep = (got["boxes"][:, 2] > got["boxes"][:, 0]) & (got["boxes"][:, 3] > got["boxes"][:, 1])  # detector_postprocess drops empty boxes
    expected = {"boxes": instances.pred_boxes.tensor, "scores": instances.scores, "classes": instances.pred_classes}
    ok, why = match_detections(expected, {k: v[keep] for k, v in got.items()}, 1e-3, 1e-4)
    assert ok, why
    assert got["boxes"][:, 2].max() <= width and got["boxes"][:, 3].max() <= height


def test_the_graph_equals_the_models_forward_exactly(exported):
    config, checkpoint, _ = exported["baseline"]
    model = load_model(config, checkpoint)
    image = torch.rand(3, 120, 150, generator=torch.Generator().manual_seed(4)) * 255
    with torch.no_grad(), attention_implementation(model):
        boxes, scores, classes = InferenceGraph(model)(image)
        instances = model([{"image": image}])[0]["instances"]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # detector_postprocess drops empty boxes
    torch.testing.assert_close(instances.scores, scores[keep], rtol=0, atol=0)
    torch.testing.assert_close(instances.pred_classes, classes[keep], rtol=0, atol=0)
    torch.testing.assert_close(instances.pred_boxes.tensor, boxes[keep], rtol=1e-6, atol=1e-4)


def test_the_torch_export_program_equals_the_graph_at_its_size(exported):
    """``--torch-export``: the saved program, loaded back, gives the graph's outputs bit for bit on a
    128 x 160 image (the size it was exported for)."""
    config, checkpoint, path = exported["baseline"]
    program = torch.export.load(str(path.with_suffix(".pt2")))
    model = load_model(config, checkpoint)
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(6)) * 255
    with attention_implementation(model), torch.no_grad():
        expected = InferenceGraph(model)(image)
        got = program.module()(image)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_demo_with_the_onnx_file_gives_the_pytorch_demos_detections(exported, tmp_path):
    config, checkpoint, path = exported["baseline"]
    images = [str(p) for p in sorted((REPO / "datasets" / "shapes" / "val").glob("*.png"))[:2]] or pytest.skip("no shapes_val")
    common = ["--config-file", str(REPO / config), "--input", *images, "--confidence-threshold", "0.0"]
    torch_files, _ = demo.main([*common, "--output", str(tmp_path / "pt"), f"train.init_checkpoint={checkpoint}"])
    onnx_files, _ = demo.main([*common, "--output", str(tmp_path / "onnx"), "--onnx", str(path)])
    import json

    for a, b in zip(torch_files, onnx_files):
        det = [json.loads(Path(f + ".json").read_text())["detections"] for f in (a, b)]
        assert len(det[0]) == len(det[1]) > 50
        as_tensors = [{"boxes": torch.tensor([d["box_xyxy"] for d in ds]), "scores": torch.tensor([d["score"] for d in ds]),
                       "classes": torch.tensor([d["class_id"] for d in ds])} for ds in det]
        ok, why = match_detections(*as_tensors, 1e-3, 1e-4)
        assert ok, (a, why)
        assert Path(b + ".png").exists()


def test_bad_requests_say_what_to_do(exported, tmp_path):
    config, checkpoint, path = exported["baseline"]
    model = load_model(config, checkpoint)
    model.eval_nms_threshold = 0.7
    with pytest.raises(ValueError, match="eval_nms_threshold=0.7: the exported graph has no NMS"):
        InferenceGraph(model)
    with pytest.raises(FileNotFoundError, match="--onnx .*missing.onnx: no such file"):
        demo.OnnxPredictor(str(tmp_path / "missing.onnx"))


QR_DETR = "projects/qr_detr/configs/qr_detr_shapes_tiny.py"


def test_qr_detr_exports_with_its_routers(tmp_path, shapes_mini):
    """QR-DETR's routers are part of its inference model, so of the graph: a random checkpoint whose
    routers pass a different number of queries on each image (fewer than all) exports, and onnxruntime
    gives ``forward``'s detections on images of other sizes than the traced one (the traced graph has a
    slot for every query, the bypassed ones as padding, instead of the count the trace saw)."""
    import onnxruntime

    checkpoint = random_checkpoint(QR_DETR, tmp_path / "qr.pth")
    path = tmp_path / "qr.onnx"
    export_onnx.main(["--config-file", str(REPO / QR_DETR), "--output", str(path), f"train.init_checkpoint={checkpoint}"])
    model = load_model(QR_DETR, checkpoint)
    session = onnxruntime.InferenceSession(str(path))
    passed = []
    for seed, (height, width) in enumerate([(96, 112), (150, 120)]):
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed)) * 255
        with attention_implementation(model), torch.no_grad():
            instances = model([{"image": image}])[0]["instances"]
        passed.append([int(layer.last_passed) for layer in model.transformer.decoder.layers])
        got = dict(zip(("boxes", "scores", "classes"), map(torch.from_numpy, session.run(None, {"image": image.numpy()}))))
        keep = (got["boxes"][:, 2] > got["boxes"][:, 0]) & (got["boxes"][:, 3] > got["boxes"][:, 1])
        expected = {"boxes": instances.pred_boxes.tensor, "scores": instances.scores, "classes": instances.pred_classes}
        ok, why = match_detections(expected, {k: v[keep] for k, v in got.items()}, 1e-3, 1e-4)
        assert ok, why
    num_queries = model.transformer.num_queries
    assert all(0 < p < num_queries for p in passed[0]) and passed[0] != passed[1], passed
