"""Helpers shared by the model tests: the real model configs made tiny, synthetic inputs, and
direct access to the transformer's encoder state.

The sizes follow ``configs/shapes/deformable_detr_tiny.py`` (thin ResNet-18 backbone, d_model 128)
with fewer layers and queries; the configs' decisive switches (two-stage, mixed query selection,
look-forward-twice, box refinement) are left as the config file sets them unless a test asks.
"""
import copy
from pathlib import Path
from typing import Dict, List

import torch

import detr_plus  # noqa: F401  (detectron2 compatibility patches, before any detectron2 import)
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Boxes, Instances

from detr_plus.modeling import resnet_stages, strip_training_parts

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "plain": REPO / "configs" / "models" / "deformable_detr_r50.py",  # published single-stage
    "refine": REPO / "configs" / "models" / "deformable_detr_refine_r50.py",
    "two_stage": REPO / "configs" / "models" / "deformable_detr_two_stage_r50.py",
    "plusplus": REPO / "configs" / "models" / "deformable_detr_plusplus_r50.py",
    "dab": REPO / "configs" / "models" / "dab_deformable_detr_r50.py",
    "dino": REPO / "configs" / "models" / "dino_r50.py",
}
WIDTH = 32  # as configs/shapes/deformable_detr_tiny.py: ResNet-18 at half width
D_MODEL = 128
NUM_CLASSES = 3
IMAGE_SIZES = [(64, 80), (72, 64)]  # (H, W) of the two synthetic images


def tiny_model_config(name="plusplus", enc_layers=1, dec_layers=2, num_queries=20, num_classes=NUM_CLASSES, decoder=None, **transformer):
    """``LazyConfig.load(configs/models/<name>).model`` with only the sizes overridden.

    ``transformer`` overrides ``model.transformer`` keys (e.g. ``query_init="anchors"``), ``decoder``
    ``model.transformer.decoder`` keys."""
    model = shrink_model_config(LazyConfig.load(str(CONFIGS[name])).model, enc_layers, dec_layers, num_queries, num_classes)
    model.transformer.update(transformer)
    model.transformer.decoder.update(decoder or {})
    return model


def shrink_model_config(model, enc_layers=1, dec_layers=2, num_queries=20, num_classes=NUM_CLASSES):
    """A model config (``cfg.model`` of any Deformable-DETR config) with the sizes of this module:
    thin ResNet-18 backbone (also in place of another backbone: a timm Swin-L), d_model 128,
    ``enc_layers`` / ``dec_layers`` layers; the rest as given."""
    if "stem" not in model.backbone:
        from detectron2.modeling.backbone import BasicStem, ResNet

        model.backbone = L(ResNet)(stem=L(BasicStem)(in_channels=3), stages=None, out_features=list(model.neck.in_features))
    model.backbone.stem.out_channels = WIDTH
    model.backbone.stem.norm = "BN"
    model.backbone.stages = L(resnet_stages)(depth=18, base_channels=WIDTH, norm="BN")
    model.backbone.freeze_at = 0
    model.neck.input_shapes = {f: L(ShapeSpec)(channels=WIDTH * 2 ** (int(f[3:]) - 2)) for f in model.neck.in_features}
    model.neck.out_channels = D_MODEL
    model.position_embedding.num_pos_feats = D_MODEL // 2
    model.transformer.encoder.update(num_layers=enc_layers, d_model=D_MODEL, d_ffn=2 * D_MODEL)
    model.transformer.decoder.update(num_layers=dec_layers, d_model=D_MODEL, d_ffn=2 * D_MODEL)
    model.transformer.num_classes = num_classes
    model.transformer.num_queries = num_queries
    for name, source in dict(model.get("group_sources") or {}).items():  # H-DETR's one-to-many queries: 2x the primary
        if name != "_target_" and hasattr(source, "get") and source.get("num_queries") is not None:
            source.num_queries = 2 * num_queries
    return model


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return instantiate(cfg)


def with_copied_teacher(model):
    """``model`` with a frozen copy of itself attached as its EMA teacher when it needs one (as
    ``train_net.py`` attaches the EMA at step 0, before any update)."""
    if getattr(model, "requires_teacher", False):
        model.attach_teacher(copy.deepcopy(model).eval().requires_grad_(False))
    return model


def build_tiny_model(name="plusplus", seed=0, **kwargs):
    return build(tiny_model_config(name, **kwargs), seed)


SMALL_IMAGE_SIZES = [(32, 40), (36, 32)]  # padded to 64 x 64: still 85 encoder positions (>= num_queries)


def synthetic_batch(with_instances=True, size_scale=None, seed=0, sizes=IMAGE_SIZES, with_masks=False) -> List[Dict]:
    """Two uint8 CHW images of different sizes; the first has two boxes, the second none.

    ``size_scale`` adds ``height``/``width`` = scale x the tensor size (the original image size);
    ``with_masks``: ``gt_masks`` too, each box's rectangle of pixels."""
    gen = torch.Generator().manual_seed(seed)
    batch = []
    # First image: boxes (x0, y0, x1, y1) as fractions of (W, H, W, H); 4,6,40,30 and 30,20,75,60 px at 80 x 64.
    fractions = torch.tensor([[4 / 80, 6 / 64, 40 / 80, 30 / 64], [30 / 80, 20 / 64, 75 / 80, 60 / 64]])
    gt = [(fractions, torch.tensor([0, 2])), (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))]
    for (h, w), (boxes, classes) in zip(sizes, gt):
        x = {"image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)}
        if size_scale is not None:
            x["height"], x["width"] = h * size_scale, w * size_scale
        if with_instances:
            instances = Instances((h, w))
            instances.gt_boxes = Boxes(boxes * torch.tensor([w, h, w, h], dtype=torch.float32))
            instances.gt_classes = classes
            if with_masks:
                masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
                for mask, (x0, y0, x1, y1) in zip(masks, instances.gt_boxes.tensor.round().long().tolist()):
                    mask[y0:y1, x0:x1] = True
                instances.gt_masks = BitMasks(masks)
            x["instances"] = instances
        batch.append(x)
    return batch


def assert_inference_without_training_parts(model, inference_cfg, sizes=IMAGE_SIZES, seed=1):
    """``model``'s weights without its training-only parts load strictly into ``inference_cfg``'s
    model, and both give bit-equal detections on an image-only batch. Returns (inference model,
    ``model``'s per-image ``Instances``)."""
    inference = build(inference_cfg, seed)
    inference.load_state_dict(strip_training_parts(model.state_dict()), strict=True)
    batch = synthetic_batch(with_instances=False, sizes=sizes)
    model.eval(), inference.eval()
    with torch.no_grad():
        results = [(x["instances"], y["instances"]) for x, y in zip(model(batch), inference(batch))]
    for a, b in results:
        assert len(a) == len(b)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    return inference, [a for a, _ in results]


def batch_without_objects():
    """``synthetic_batch()`` with every object removed (both images keep their ``instances``)."""
    batch = synthetic_batch()
    for x in batch:
        x["instances"] = x["instances"][:0]
    return batch


def targets_of(model, batch):
    images, _ = model.preprocess_images(batch)
    return model.prepare_targets(batch, images.image_sizes)


def encode(model, batch):
    """The transformer's ``EncoderState`` of ``batch`` (backbone + neck + encoder)."""
    return model.encode_and_select(batch)[1]


def features_of(model, batch):
    """The neck's multi-scale features, their padding masks and position embeddings."""
    images, masks = model.preprocess_images(batch)
    return model.extract_features(images, masks)[1:]


def random_queries(batch_size, num, d_model=D_MODEL, seed=0, dtype=torch.float32):
    """Content queries (B, num, d) and reference boxes (B, num, 4) inside the image."""
    gen = torch.Generator().manual_seed(seed)
    content = torch.randn(batch_size, num, d_model, generator=gen, dtype=dtype)
    centres = torch.rand(batch_size, num, 2, generator=gen, dtype=dtype) * 0.6 + 0.2
    sizes = torch.rand(batch_size, num, 2, generator=gen, dtype=dtype) * 0.3 + 0.05
    return content, torch.cat([centres, sizes], -1)


def random_decoder_queries(batch_size, num, d_model=D_MODEL, seed=0, static_position=False):
    """``DecoderQueries`` from ``random_queries`` (with a random static position if asked)."""
    from detr_plus.modeling import DecoderQueries

    content, reference = random_queries(batch_size, num, d_model, seed)
    position = torch.randn(batch_size, num, d_model, generator=torch.Generator().manual_seed(seed + 100)) if static_position else None
    return DecoderQueries(content, reference, position)


class CallCounter:
    """Forward-hook call counter for a set of modules; ``remove()`` detaches the hooks."""

    def __init__(self, modules):
        self.counts: Dict[str, int] = {}
        self.handles = []
        for name, module in modules.items():
            self.counts[name] = 0
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args, output):
            self.counts[name] += 1

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def assert_finite_grads(module: torch.nn.Module, what: str, allow_none=()):
    """Every trainable parameter of ``module`` got a finite gradient, and not all of them are zero."""
    missing, total = [], 0.0
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            if not any(name.startswith(prefix) for prefix in allow_none):
                missing.append(name)
            continue
        assert torch.isfinite(p.grad).all(), f"{what}.{name}: non-finite gradient"
        total += p.grad.abs().sum().item()
    assert not missing, f"{what}: no gradient for {missing}"
    assert total > 0, f"{what}: all gradients are zero"


def primary_losses(losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in losses.items() if "/" not in k}
