"""What the QR-DETR analysis tools share: a model's COCO bbox AP on the config's test set."""
import torch
from detectron2.config import instantiate
from detectron2.evaluation import inference_on_dataset


def bbox_ap(cfg, model, loader) -> float:
    """bbox AP of ``model`` on ``loader`` with ``cfg.dataloader.evaluator``, writing no result files."""
    cfg.dataloader.evaluator.output_dir = None
    with torch.no_grad():
        return inference_on_dataset(model, loader, instantiate(cfg.dataloader.evaluator))["bbox"]["AP"]
