"""``DeformableDETR``: the Detectron2 meta-architecture that wraps the shared transformer."""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from torch import nn
from torchvision.ops import batched_nms

from ..layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from .criterion import SetCriterion
from .decoder import DecoderOutput, LayerPredictions
from .transformer import DeformableTransformer


@META_ARCH_REGISTRY.register()
class DeformableDETR(nn.Module):
    """Backbone -> neck -> deformable transformer -> per-layer heads.

    Training returns a dict of weighted losses: the primary (one-to-one) route on every decoder
    layer (``loss_class`` for the last layer, ``loss_class_{i}`` for layer i), the encoder's
    two-stage proposals (``loss_class_enc``, scaled by ``enc_loss_weight``), and every training
    route in ``routes`` (``{name}/loss_class_{i}``). Inference returns Detectron2 ``Instances`` in
    original image coordinates: the top ``select_box_nums_for_evaluation`` of queries x classes.

    Evaluating a training route (default off: inference runs the primary route only):
    * ``eval_route``: name of a route whose last-layer predictions are evaluated instead (the decoder
      then runs that one route in eval mode too), e.g. a one-to-many route;
    * ``eval_nms_threshold``: class-wise NMS at this IoU over the top ``eval_pre_nms_topk``
      (query, class) pairs, then the top ``select_box_nums_for_evaluation`` are kept (one-to-many
      predictions have duplicates by design: LoRA-DETR Table 5 "Aux. w. NMS", Mr. DETR "w/ NMS").
    """

    def __init__(self, *, backbone, neck, position_embedding, transformer: DeformableTransformer, criterion: SetCriterion,
                 pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375), input_format="RGB",
                 size_divisibility=32, select_box_nums_for_evaluation=100, enc_loss_weight=1.0,
                 routes: Optional[Dict[str, nn.Module]] = None, eval_route: Optional[str] = None,
                 eval_nms_threshold: Optional[float] = None, eval_pre_nms_topk: int = 1000):
        super().__init__()
        self.backbone, self.neck, self.position_embedding = backbone, neck, position_embedding
        self.transformer, self.criterion = transformer, criterion
        self.routes = nn.ModuleDict(routes or {})
        if eval_route is not None and eval_route not in self.routes:
            raise ValueError(f"eval_route={eval_route!r} is not one of the model's routes {list(self.routes)}")
        self.eval_route, self.eval_nms_threshold, self.eval_pre_nms_topk = eval_route, eval_nms_threshold, eval_pre_nms_topk
        self.input_format, self.size_divisibility = input_format, size_divisibility
        self.select_box_nums_for_evaluation, self.enc_loss_weight = select_box_nums_for_evaluation, enc_loss_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    # --- inputs --------------------------------------------------------------------------------
    def preprocess_images(self, batched_inputs):
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        masks = torch.ones(images.tensor.shape[0], *images.tensor.shape[-2:], dtype=torch.bool, device=self.device)
        for mask, (h, w) in zip(masks, images.image_sizes):
            mask[:h, :w] = False
        return images, masks

    def prepare_targets(self, batched_inputs, image_sizes):
        targets = []
        for x, (h, w) in zip(batched_inputs, image_sizes):
            instances = x["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_xyxy_to_cxcywh(instances.gt_boxes.tensor / scale)
            targets.append({"labels": instances.gt_classes, "boxes": boxes})
        return targets

    def extract_features(self, images, masks):
        """Multi-scale features, their padding masks and sine position embeddings."""
        features = self.neck(self.backbone(images.tensor))
        level_masks = [F.interpolate(masks[None].float(), size=f.shape[-2:])[0].bool() for f in features]
        pos = [self.position_embedding(m).to(f.dtype) for f, m in zip(features, level_masks)]
        return features, level_masks, pos

    # --- forward -------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        images, masks = self.preprocess_images(batched_inputs)
        features, level_masks, pos = self.extract_features(images, masks)
        out, enc_predictions, _ = self.transformer(features, level_masks, pos, routes=self.decoder_routes())
        if self.training:
            targets = self.prepare_targets(batched_inputs, images.image_sizes)
            return self.losses(out, enc_predictions, targets)
        final = self.inference_predictions(out)
        return self.inference(final.logits, final.boxes, images.image_sizes, batched_inputs)

    def decoder_routes(self) -> Optional[Dict[str, nn.Module]]:
        """The routes the decoder runs: all in training, none at inference (inference costs what the
        baseline costs) unless ``eval_route`` names one to evaluate."""
        if self.training:
            return self.routes
        return None if self.eval_route is None else {self.eval_route: self.routes[self.eval_route]}

    def inference_predictions(self, out: DecoderOutput) -> LayerPredictions:
        """The predictions inference post-processes: the primary route's (or ``eval_route``'s) last decoder layer."""
        if self.eval_route is None:
            return out.layers[-1]
        final = out.routes[self.eval_route][-1]
        if final is None:
            raise ValueError(f"route {self.eval_route!r} has no branch in the last decoder layer")
        return final

    @staticmethod
    def num_boxes(targets, device):
        """GT boxes over the whole (distributed) batch, at least 1: the loss normalizer."""
        count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(count)
            count = count / comm.get_world_size()
        return count.clamp(min=1.0).item()

    def losses(self, out, enc_predictions, targets):
        num_boxes = self.num_boxes(targets, self.device)
        losses = {}

        def add(criterion, predictions, prefix, suffix, scale=1.0):
            terms, _ = criterion(predictions["logits"], predictions["boxes"], targets, num_boxes)
            losses.update({f"{prefix}{k}{suffix}": v * scale for k, v in terms.items()})

        last = len(out.layers) - 1
        for i, layer in enumerate(out.layers):
            add(self.criterion, vars(layer), "", "" if i == last else f"_{i}")
        if enc_predictions is not None:
            add(self.criterion, enc_predictions, "", "_enc", self.enc_loss_weight)
        for name, layers in out.routes.items():
            route = self.routes[name]
            for i, layer in enumerate(layers):
                if layer is not None:
                    add(route.criterion, vars(layer), f"{name}/", f"_{i}", route.loss_scale)
        return losses

    def inference(self, logits, boxes, image_sizes, batched_inputs):
        """Top-k over queries x classes (Deformable DETR's post-processing), boxes back to input size;
        k = ``select_box_nums_for_evaluation`` (after NMS with ``eval_nms_threshold``)."""
        num_classes = logits.shape[-1]
        num_select = self.select_box_nums_for_evaluation
        nms = self.eval_nms_threshold is not None
        k = min(max(self.eval_pre_nms_topk, num_select) if nms else num_select, logits.shape[1] * num_classes)
        scores, flat = logits.sigmoid().flatten(1).topk(k, dim=1)
        query, labels = flat // num_classes, flat % num_classes
        boxes = box_cxcywh_to_xyxy(boxes.gather(1, query[..., None].expand(-1, -1, 4)))
        results = []
        for i, (h, w) in enumerate(image_sizes):
            instances = Instances((h, w))
            instances.pred_boxes = Boxes(boxes[i] * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device))
            instances.pred_boxes.clip((h, w))
            instances.scores = scores[i]
            instances.pred_classes = labels[i]
            x = batched_inputs[i]
            instances = detector_postprocess(instances, x.get("height", h), x.get("width", w))
            if nms:
                keep = batched_nms(instances.pred_boxes.tensor, instances.scores, instances.pred_classes, self.eval_nms_threshold)
                instances = instances[keep[:num_select]]
            results.append({"instances": instances})
        return results
