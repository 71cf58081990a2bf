"""Instance segmentation (issue #32): the point-sampled mask loss on hand-computed points, the
uncertainty sampling, masks through the mapper's flip / crop / resize against masks transformed by
hand, the mask head on the core's ``heads`` slot (every supervised route's last layer, one shared
module), the post-processing to ``pred_masks``, segm AP of perfect predictions, the bad-mask checks,
and Mr. DETR with masks evaluating bit-equal to its stripped baseline."""
import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

from detr_plus.data import DetrDatasetMapper
from detr_plus.data.checks import clean_annotations, report_empty_polygons
from detr_plus.modeling import strip_training_parts
from detr_plus.modeling import mask_losses
from detr_plus.modeling.mask_head import MaskHead
from model_utils import synthetic_batch
from test_first_step_losses import instantiate_shrunk

BASELINE = "configs/shapes/deformable_detr_tiny_masks.py"
MR_DETR = "projects/mr_detr/configs/mr_detr_shapes_tiny_masks.py"

pytestmark = pytest.mark.usefixtures("single_thread")


# --- the loss -----------------------------------------------------------------------------------
def test_point_sample_reads_pixel_centres_and_interpolates_between_them():
    """A 2 x 2 map [[0, 2], [-2, 4]]: at the pixel centres (x, y) = (0.25, 0.25), (0.75, 0.25),
    (0.25, 0.75) the pixel values; at the image centre their mean 1; outside, zero padding."""
    maps = torch.tensor([[[0.0, 2.0], [-2.0, 4.0]]])
    points = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.5], [0.5, 0.25]]])
    torch.testing.assert_close(mask_losses.point_sample(maps, points), torch.tensor([[0.0, 2.0, -2.0, 1.0, 1.0]]))


def test_mask_losses_at_known_points(monkeypatch):
    """Two masks, logits 2 x 2, targets 4 x 4 constant on each 2 x 2 block, three points at pixel
    centres of the logits (so every sample is exact): BCE and dice by hand."""
    logits = torch.tensor([[[0.0, 2.0], [-2.0, 4.0]], [[1.0, -1.0], [3.0, 0.5]]])
    blocks = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
    targets = blocks.repeat_interleave(2, 1).repeat_interleave(2, 2)
    points = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75]]).expand(2, 3, 2)
    monkeypatch.setattr(mask_losses, "uncertain_points", lambda *a, **k: points)
    bce, dice = mask_losses.point_mask_losses(logits, targets, num_points=3)
    # mask 1: x = 0, 2, -2 at t = 1, 0, 0; mask 2: x = 1, -1, 3 at t = 0, 0, 1
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  BCE(x, t) = softplus(x) - x t
    bce1 = (softplus(0) + softplus(2) + softplus(-2)) / 3
    bce2 = (softplus(1) + softplus(-1) + softplus(3) - 3) / 3
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    dice1 = 1 - (2 * sig(0) + 1) / (sig(0) + sig(2) + sig(-2) + 1 + 1)
    dice2 = 1 - (2 * sig(3) + 1) / (sig(1) + sig(-1) + sig(3) + 1 + 1)
    assert bce.item() == pytest.approx(bce1 + bce2, rel=1e-6)
    assert dice.item() == pytest.approx(dice1 + dice2, rel=1e-6)


def test_uncertain_points_take_the_uncertain_region_and_are_fixed_by_the_seed():
    """Logits 0 on the left half, +-10 on the right: the 0.75 x 200 importance points all lie on the
    left (|logit| smallest), the 50 others anywhere; the same generator seed gives the same points."""
    logits = torch.zeros(2, 8, 8)
    logits[:, :, 4:] = 10.0
    logits[1, :, 4:] = -10.0
    points = mask_losses.uncertain_points(logits, 200, 3.0, 0.75, torch.Generator().manual_seed(3))
    assert points.shape == (2, 200, 2)
    assert (points[:, :150, 0] < 0.5).all()
    assert (points[:, 150:, 0] >= 0.5).any()  # the random rest covers the other half too
    again = mask_losses.uncertain_points(logits, 200, 3.0, 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(points, again)
    assert not torch.equal(points, mask_losses.uncertain_points(logits, 200, 3.0, 0.75, torch.Generator().manual_seed(4)))


def test_no_matched_pair_gives_zero_losses_that_reach_the_head():
    logits = torch.zeros(0, 4, 4, requires_grad=True)
    bce, dice = mask_losses.point_mask_losses(logits, torch.zeros(0, 16, 16), num_points=8)
    assert bce.item() == 0 and dice.item() == 0 and bce.requires_grad


# --- the data -----------------------------------------------------------------------------------
class Fixed(T.Augmentation):
    """An augmentation that always applies ``transform``."""

    def __init__(self, transform):
        super().__init__()
        self.transform = transform

    def get_transform(self, image):
        return self.transform


def write_image(path, height, width):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def test_masks_through_flip_crop_resize_equal_masks_transformed_by_hand(tmp_path):
    """A 20 x 30 image with a polygon (a rectangle) and an RLE mask (an L shape): horizontal flip, crop
    of rows 4-15 and columns 6-25, resize x2 (nearest for masks) equal numpy's flip, slice and repeat."""
    write_image(tmp_path / "a.png", 20, 30)
    rectangle = np.zeros((20, 30), np.uint8)
    rectangle[3:9, 5:17] = 1
    ell = np.zeros((20, 30), np.uint8)
    ell[10:18, 20:23] = 1
    ell[15:18, 20:28] = 1
    rle = mask_util.encode(np.asfortranarray(ell))
    rle["counts"] = rle["counts"].decode("ascii")
    record = {"file_name": str(tmp_path / "a.png"), "height": 20, "width": 30, "image_id": 1, "annotations": [
        {"bbox": [5, 3, 12, 6], "bbox_mode": 1, "category_id": 0, "segmentation": [[5, 3, 17, 3, 17, 9, 5, 9]]},
        {"bbox": [20, 10, 8, 8], "bbox_mode": 1, "category_id": 1, "segmentation": rle}]}
    augmentations = [T.RandomFlip(prob=1.0), Fixed(T.CropTransform(6, 4, 20, 12)), Fixed(T.ResizeTransform(12, 20, 24, 40))]
    mapper = DetrDatasetMapper(True, augmentations, mask_format="bitmask")
    out = mapper(record)
    got = out["instances"].gt_masks.tensor.numpy()

    def by_hand(mask):
        return mask[:, ::-1][4:16, 6:26].repeat(2, 0).repeat(2, 1)

    assert got.shape == (2, 24, 40)
    np.testing.assert_array_equal(got[0], by_hand(rectangle).astype(bool))
    np.testing.assert_array_equal(got[1], by_hand(ell).astype(bool))
    assert got[0].sum() > 0 and got[1].sum() > 0
    assert "gt_masks" not in DetrDatasetMapper(True, augmentations)(record)["instances"]._fields  # boxes only by default


def test_an_image_without_objects_has_an_empty_mask_field(tmp_path):
    write_image(tmp_path / "b.png", 16, 16)
    out = DetrDatasetMapper(True, [], mask_format="bitmask")({"file_name": str(tmp_path / "b.png"), "height": 16, "width": 16,
                                                              "image_id": 2, "annotations": []})
    assert tuple(out["instances"].gt_masks.tensor.shape) == (0, 16, 16)


def test_an_annotation_without_a_mask_is_named(tmp_path):
    write_image(tmp_path / "c.png", 16, 16)
    record = {"file_name": str(tmp_path / "c.png"), "height": 16, "width": 16, "image_id": 3,
              "annotations": [{"id": 7, "bbox": [1, 1, 5, 5], "bbox_mode": 1, "category_id": 0}]}
    with pytest.raises(KeyError, match="c.png: annotation id=7 has no 'segmentation'"):
        DetrDatasetMapper(True, [], mask_format="bitmask")(record)


def test_bad_masks_are_counted_and_reported(tmp_path, caplog):
    """Polygons wholly outside the image, an RLE of another size and an empty RLE are dropped with
    their annotations; an empty polygon list is counted from the json (detectron2's loader drops it)."""
    empty_rle = mask_util.encode(np.asfortranarray(np.zeros((10, 10), np.uint8)))
    full_rle = mask_util.encode(np.asfortranarray(np.ones((12, 10), np.uint8)))
    anns = [
        {"id": 1, "bbox": [1, 1, 4, 4], "bbox_mode": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},  # fine
        {"id": 2, "bbox": [1, 1, 4, 4], "bbox_mode": 1, "segmentation": [[20, 1, 25, 1, 25, 5]]},  # x beyond width 10
        {"id": 3, "bbox": [1, 1, 4, 4], "bbox_mode": 1, "segmentation": full_rle},  # 12 x 10 on a 10 x 10 image
        {"id": 4, "bbox": [1, 1, 4, 4], "bbox_mode": 1, "segmentation": empty_rle},
    ]
    dicts = [{"file_name": "x.png", "image_id": 1, "height": 10, "width": 10, "annotations": anns}]
    with caplog.at_level("WARNING"):
        counts = clean_annotations(dicts, "my.json")
    assert counts == {"mask_outside_image": 1, "mask_size_mismatch": 1, "mask_empty": 1}
    assert [a["id"] for a in dicts[0]["annotations"]] == [1]
    assert "1 annotation(s) dropped: mask polygons wholly outside the image (first: annotation id=2" in caplog.text
    data = {"annotations": [{"id": 5, "image_id": 1, "segmentation": [[1, 2, 3, 4]]}, {"id": 6, "image_id": 1, "segmentation": []},
                            {"id": 8, "image_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]}]}
    assert report_empty_polygons("my.json", data) == 2
    assert "2 annotation(s) dropped: mask polygons empty" in caplog.text and "annotation id=5" in caplog.text


def test_the_shapes_generator_writes_each_objects_visible_pixels(shapes_mini):
    """The RLE of every object covers exactly ``area`` pixels, its tight extent is the box, and no two
    objects of an image share a pixel (later shapes cover earlier ones)."""
    from detectron2.data import DatasetCatalog

    for record in DatasetCatalog.get(shapes_mini[0])[:20]:
        masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in record["annotations"]]
        for mask, ann in zip(masks, record["annotations"]):
            ys, xs = np.nonzero(mask)
            assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == list(ann["bbox"])
        if masks:
            assert np.stack(masks).sum(0).max() == 1


# --- the head and the model ---------------------------------------------------------------------
def test_finish_upsamples_crops_resizes_and_thresholds():
    """Logits at stride 16 of a 32 x 32 padded input, the image its top-left 16 x 16, the output 32 x 32:
    a query positive on the left logit column covers the whole image (the right half of the padded
    input is cut away), one positive on the right column covers none of it; the logits field is
    replaced by boolean ``pred_masks``."""
    logits = torch.tensor([[[5.0, -5.0], [5.0, -5.0]], [[-5.0, 5.0], [-5.0, 5.0]]])
    instances = Instances((32, 32))
    instances.pred_mask_logits = logits
    out = MaskHead.finish(instances, (16, 16), (32, 32))
    assert not out.has("pred_mask_logits") and out.pred_masks.dtype == torch.bool
    assert out.pred_masks.shape == (2, 32, 32)
    assert out.pred_masks[0].all() and not out.pred_masks[1].any()


def masked_batch():
    return synthetic_batch(with_masks=True)


@pytest.mark.parametrize("config, stride, level_cells", [
    ("configs/h_detr/deformable_detr_plusplus_r50_300q_masks_12ep.py", 16, 2 * 3),  # Mr. DETR's head: stride-64 memory
    (BASELINE, 8, 4 * 5),  # the 128 px head: stride-32 memory, features at their own strides
])
def test_mask_logits_stride_and_the_memory_level_attended(config, stride, level_cells):
    """A 128 x 160 image: logits at stride 16 (COCO head) or 8 (shapes head); the attention maps cover
    the stride-64 (2 x 3 cells) or stride-32 (4 x 5) level."""
    model = instantiate_shrunk(config).eval()
    seen = {}
    model.heads["mask"].decoder.output.register_forward_hook(lambda m, a, out: seen.setdefault("logits", out))
    model.heads["mask"].attention.register_forward_hook(lambda m, a, out: seen.setdefault("maps", out))
    with torch.no_grad():
        model([{"image": torch.zeros(3, 128, 160, dtype=torch.uint8)}])
    assert tuple(seen["logits"].shape[-2:]) == (128 // stride, 160 // stride)
    assert seen["maps"].shape[-2] * seen["maps"].shape[-1] == level_cells
    torch.testing.assert_close(seen["maps"].flatten(2).sum(-1), torch.ones(seen["maps"].shape[:2]))  # one softmax over heads x cells


def test_mr_detr_supervises_the_last_layer_of_every_route_with_one_shared_head():
    model = instantiate_shrunk(MR_DETR).train()
    losses = model(masked_batch())
    mask_keys = sorted(k for k in losses if "mask" in k or "dice" in k)
    assert mask_keys == ["loss_dice", "loss_mask", "route1/loss_dice_1", "route1/loss_mask_1",
                         "route3/loss_dice_1", "route3/loss_mask_1"]
    assert list(model.heads) == ["mask"]
    sum(losses.values()).backward()
    assert model.heads["mask"].decoder.output.weight.grad.abs().sum() > 0


def test_the_mask_loss_drops_when_the_head_trains():
    """Thirty steps of Adam (LR 1e-2) on the head alone, one batch, the same points each step: the
    point-sampled loss falls by more than 15 % (measured: 4.95 -> 3.96)."""
    model = instantiate_shrunk(BASELINE).train()
    batch = masked_batch()
    optimizer = torch.optim.Adam(model.heads.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        torch.manual_seed(0)  # the same points every step
        losses = model(batch)
        loss = losses["loss_mask"] + losses["loss_dice"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.85 * history[0], history


def test_mr_detr_with_masks_evaluates_bit_equal_to_its_stripped_baseline():
    """Inference of Mr. DETR with masks is the baseline's: its weights without the routes load strictly
    into the baseline-with-masks model (the same parameters) and give equal boxes, scores and masks."""
    method = instantiate_shrunk(MR_DETR).eval()
    baseline = instantiate_shrunk(BASELINE).eval()
    batch = synthetic_batch(with_instances=False, size_scale=2)
    output = method.heads["mask"].decoder.output
    logits = []
    handle = output.register_forward_hook(lambda module, args, out: logits.append(out))
    with torch.no_grad():
        method(batch)
        handle.remove()
        output.bias -= logits[0].median()  # about half of the mask pixels positive: masks worth comparing
    state = strip_training_parts(method.state_dict())
    assert sum(v.numel() for v in state.values()) == sum(v.numel() for v in baseline.state_dict().values())
    baseline.load_state_dict(state, strict=True)
    with torch.no_grad():
        for x, got, want in zip(batch, method(batch), baseline(batch)):
            got, want = got["instances"], want["instances"]
            assert tuple(got.pred_masks.shape[-2:]) == (x["height"], x["width"])  # the original size
            assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor) and torch.equal(got.scores, want.scores)
            assert torch.equal(got.pred_masks, want.pred_masks)
            assert 0.1 < got.pred_masks.float().mean() < 0.9


# --- evaluation ---------------------------------------------------------------------------------
def test_segm_ap_of_perfect_predictions_is_100(tmp_path):
    """A hand-made json of two images and three polygons: predictions equal to the ground truth give
    segm AP 100; the same masks shifted by a quarter of their width give less."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import COCOEvaluator

    polygons = {1: [[[4, 4, 20, 4, 20, 20, 4, 20]], [[30, 10, 50, 10, 40, 30]]], 2: [[[10, 5, 40, 5, 40, 25, 10, 25]]]}
    images, annotations = [], []
    for image_id, polys in polygons.items():
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 40, "width": 60})
        for poly in polys:
            rle = mask_util.merge(mask_util.frPyObjects(poly, 40, 60))
            x, y, w, h = mask_util.toBbox(rle).tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "segmentation": poly,
                                "bbox": [x, y, w, h], "area": float(mask_util.area(rle)), "iscrowd": 0})
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    name = f"masks_perfect_{tmp_path.name}"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    try:
        DatasetCatalog.get(name)  # sets the json id <-> contiguous id map the evaluator reads back
        def evaluate(shift):
            evaluator = COCOEvaluator(name, output_dir=str(tmp_path))
            evaluator.reset()
            for image_id, polys in polygons.items():
                masks = torch.stack([torch.from_numpy(mask_util.decode(mask_util.merge(mask_util.frPyObjects(p, 40, 60)))).bool()
                                     for p in polys])
                masks = torch.roll(masks, shifts=shift, dims=2)
                instances = Instances((40, 60))
                instances.pred_masks = masks
                ys, xs = [torch.stack([m.nonzero()[:, i].min() for m in masks]) for i in (0, 1)]
                ye, xe = [torch.stack([m.nonzero()[:, i].max() + 1 for m in masks]) for i in (0, 1)]
                instances.pred_boxes = Boxes(torch.stack([xs, ys, xe, ye], 1).float())
                instances.scores = torch.ones(len(masks))
                instances.pred_classes = torch.zeros(len(masks), dtype=torch.long)
                evaluator.process([{"image_id": image_id, "height": 40, "width": 60}], [{"instances": instances}])
            return evaluator.evaluate()["segm"]["AP"]

        assert evaluate(0) == pytest.approx(100.0)
        assert evaluate(5) < 60
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# --- configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, epochs, drop", [
    ("configs/h_detr/deformable_detr_plusplus_r50_300q_masks_12ep.py", 12, 11),
    ("configs/h_detr/deformable_detr_plusplus_r50_300q_masks_24ep.py", 24, 20),
    ("projects/mr_detr/configs/mr_deformable_detr_plusplus_r50_300q_masks_12ep.py", 12, 11),
    ("projects/mr_detr/configs/mr_deformable_detr_plusplus_r50_300q_masks_24ep.py", 24, 20),
])
def test_the_coco_mask_configs(config, epochs, drop):
    """300 queries, the authors' head (stride-64 memory, stride-2 feature convs, 12544 points, BCE x5,
    dice x2), the mapper keeping masks, 7500 iterations an epoch with the LR drop at ``drop``; the head
    has 26.11 M parameters on R50 (24.77 M in the stride-2 convs 2048->1024, 1024->512, 512->256)."""
    from detectron2.config import LazyConfig, instantiate

    from model_utils import REPO

    cfg = LazyConfig.load(str(REPO / config))
    head = cfg.model.heads.mask
    assert cfg.model.transformer.num_queries == 300 and cfg.dataloader.train.mapper.mask_format == "bitmask"
    assert (head.num_points, head.get("memory_level", -1), head.get("downsample_features", True)) == (12544, -1, True)
    assert cfg.train.max_iter == epochs * 7500
    assert list(cfg.lr_multiplier.scheduler.milestones) == [drop * 7500]
    with torch.device("meta"):
        built = instantiate(head)
    assert (built.mask_weight, built.dice_weight) == (5.0, 2.0)
    assert sum(p.numel() for p in built.parameters()) == 26108057
    assert sum(p.numel() for p in built.decoder.downsample.parameters()) == (2048 * 1024 + 1024 * 512 + 512 * 256) * 9 + 1024 + 512 + 256


def test_matched_loss_equals_the_loss_of_every_querys_masks():
    """The loss book's path (``matched_loss``: masks decoded for the matched queries only) gives the
    losses and gradients of decoding every query's mask and taking the matched ones (``loss``)."""
    model = instantiate_shrunk(BASELINE).train()
    head = model.heads["mask"]
    batch = synthetic_batch(with_masks=True)
    images, state, selection = model.encode_and_select(batch)
    targets = model.prepare_targets(batch, images.image_sizes, images.tensor.shape[-2:])
    final = model.transformer.decode(selection.queries, state).layers[-1]
    indices = [(torch.tensor([3, 7]), torch.tensor([1, 0])), (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))]
    results = []
    for path in ("matched", "all"):
        torch.manual_seed(5)  # the same points
        if path == "matched":
            terms = head.matched_loss(final, state, targets, indices, 2.0)
        else:
            terms = head.loss(head(final, state), final, targets, indices, 2.0)
        grads = torch.autograd.grad(sum(terms.values()), list(head.parameters()), retain_graph=True)
        results.append((terms, grads))
    (matched, g1), (full, g2) = results
    assert matched.keys() == full.keys() == {"loss_mask", "loss_dice"}
    for key in matched:
        torch.testing.assert_close(matched[key], full[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_inference_decodes_the_kept_queries_only_with_the_masks_of_decoding_all():
    """``select`` (what inference calls) decodes one mask per distinct kept query, and gives the logits
    that decoding every query's mask (``forward``) gives for those queries."""
    from detr_plus.modeling.postprocess import of_kept_queries

    model = instantiate_shrunk(BASELINE).eval()
    head = model.heads["mask"]
    batch = synthetic_batch(with_instances=False)
    with torch.no_grad():
        images, state, selection = model.encode_and_select(batch)
        final = model.transformer.decode(selection.queries, state).layers[-1]
        every = head(final, state)
        decoded = []
        handle = head.decoder.output.register_forward_hook(lambda m, a, out: decoded.append(out.shape[0]))
        query = torch.tensor([5, 2, 5, 11, 2])  # repeats: a query kept for two classes
        kept = of_kept_queries(lambda image, q: head.select(final, state, image, q), 1, query)
        handle.remove()
    assert decoded == [3]
    torch.testing.assert_close(kept, every[1][query], rtol=1e-5, atol=1e-5)
