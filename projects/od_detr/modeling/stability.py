"""Matching stability (OD-DETR Fig. 1 and Fig. 5) as metrics of a trainer hook.

* instability (DN-DETR's, Fig. 1): between two evaluations of a fixed image subset, the share of
  queries whose matched GT changed, over the queries matched in either evaluation;
* teacher/student consistency (Fig. 5): the share of the student's matched queries whose teacher
  twin (the same query index) is matched to the same GT.
Both use the last decoder layer's Hungarian assignment of the model's criterion, in eval mode.
"""
import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from detr_plus.data import DetrDatasetMapper, build_detr_test_augmentation

logger = logging.getLogger(__name__)
Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def assignment_vectors(indices: Indices, num_queries: int) -> torch.Tensor:
    """(B, Q) long: the GT each query is matched to, -1 where none."""
    out = torch.full((len(indices), num_queries), -1, dtype=torch.long)
    for b, (q, g) in enumerate(indices):
        out[b, q.cpu()] = g.cpu()
    return out


def instability(previous: torch.Tensor, current: torch.Tensor) -> float:
    """Share of queries matched in either assignment whose GT differs (0 = stable)."""
    matched = (previous >= 0) | (current >= 0)
    return float((previous != current)[matched].float().mean()) if matched.any() else 0.0


def consistency(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Share of the student's matched queries whose teacher twin has the same GT."""
    matched = student >= 0
    return float((student == teacher)[matched].float().mean()) if matched.any() else 1.0


class MatchingStabilityHook(HookBase):
    """Every ``period`` iterations (and after the last), matches the student and the EMA teacher on the
    first ``num_images`` images of ``dataset_name`` (test-time resize, GT kept) and puts
    ``stability/student_instability``, ``stability/teacher_instability`` and
    ``stability/consistency`` into the event storage (metrics.json / TensorBoard); at the end it
    plots them to ``<output_dir>/matching_stability.png`` and prints where it went."""

    def __init__(self, dataset_name: str, output_dir: str, num_images: int = 32, period: int = 100, batch_size: int = 8,
                 min_size: int = 800, max_size: int = 1333):
        self.dataset_name, self.output_dir, self.num_images, self.period = dataset_name, output_dir, num_images, period
        self.batch_size = batch_size
        self.mapper = DetrDatasetMapper(True, build_detr_test_augmentation(min_size, max_size))
        self.previous = {}
        self.history: List[dict] = []

    def before_train(self):
        self.inputs = [self.mapper(d) for d in DatasetCatalog.get(self.dataset_name)[: self.num_images]]

    @torch.no_grad()
    def assignments(self, model) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            vectors = []
            for start in range(0, len(self.inputs), self.batch_size):
                chunk = self.inputs[start : start + self.batch_size]
                result = model.detection_pass(chunk)
                vectors.append(assignment_vectors(result.matching[-1], result.decoder.layers[-1].logits.shape[1]))
            return torch.cat(vectors)
        finally:
            model.train(was_training)

    def measure(self):
        model = self.trainer.model.module if hasattr(self.trainer.model, "module") else self.trainer.model
        current = {"student": self.assignments(model)}
        ema = getattr(self.trainer, "ema", None)
        if ema is not None:
            current["teacher"] = self.assignments(ema.module)
        row = {"iteration": self.trainer.iter}
        for who, vectors in current.items():
            if who in self.previous:
                row[f"{who}_instability"] = instability(self.previous[who], vectors)
        if "teacher" in current:
            row["consistency"] = consistency(current["student"], current["teacher"])
        self.previous = current
        self.history.append(row)
        self.trainer.storage.put_scalars(**{f"stability/{k}": v for k, v in row.items() if k != "iteration"}, smoothing_hint=False)

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if comm.is_main_process() and (next_iter % self.period == 0 or next_iter == self.trainer.max_iter):
            self.measure()

    def after_train(self):
        if comm.is_main_process() and self.history:
            with open(os.path.join(self.output_dir, "matching_stability.json"), "w") as f:
                json.dump(self.history, f)
            png = plot_stability(self.history, os.path.join(self.output_dir, "matching_stability.png"))
            print(f"Matching stability curves: {os.path.abspath(png)}", flush=True)


def plot_stability(history: Sequence[dict], path: str, labels: Optional[dict] = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax, title in (("instability", axes[0], "matching instability (Fig. 1): lower is stabler"),
                           ("consistency", axes[1], "teacher / student matching consistency (Fig. 5)")):
        for name in sorted({k for row in history for k in row if key in k}):
            points = [(row["iteration"], row[name]) for row in history if name in row]
            ax.plot(*zip(*points), "o-", label=(labels or {}).get(name, name))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
