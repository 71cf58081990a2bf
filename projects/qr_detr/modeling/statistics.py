"""Routing statistics (QR-DETR Table 2: average queries passing each layer; Fig. 4: their
distribution): a training hook, and the PNG / table both it and ``tools/routing_stats.py`` write."""
import json
import os
from collections import defaultdict
from typing import Dict, List

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from .eeqr import EEQRLayer


def routed_layers(model) -> Dict[int, EEQRLayer]:
    model = model.module if hasattr(model, "module") else model
    return {i: layer for i, layer in enumerate(model.transformer.decoder.layers) if isinstance(layer, EEQRLayer)}


def collect(model, counts: Dict[str, List[int]]):
    """Append each routed layer's passed-query counts of the last forward (per image) to ``counts``."""
    for index, layer in routed_layers(model).items():
        if layer.last_passed is not None:
            counts[f"layer{index}_{layer.mode}"].extend(layer.last_passed.tolist())


def summary(counts: Dict[str, List[int]]) -> Dict[str, float]:
    return {name: sum(values) / len(values) for name, values in counts.items() if values}


def plot_routing(counts: Dict[str, List[int]], num_queries: int, path: str, title: str = "") -> str:
    """One histogram per routed layer of the queries passing it per image (Fig. 4), mean in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(counts, key=lambda n: int(n[5:].split("_")[0]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = counts[name]
        ax.hist(values, bins=min(30, num_queries + 1), range=(0, num_queries), color="tab:blue")
        ax.set_title(f"{name}: mean {sum(values) / max(len(values), 1):.1f} / {num_queries}", fontsize=9)
        ax.set_xlabel("queries passing (per image)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class RoutingStatsHook(HookBase):
    """After every step, the routed layers' passed-query counts of the training batch; every
    ``period`` iterations their means go to the event storage (``routing/layer{i}_{mode}``); at the
    end, ``routing_train.png`` (distributions over the last ``period`` iterations) and
    ``routing_train.json`` in ``output_dir``."""

    def __init__(self, output_dir: str, period: int = 20):
        self.output_dir, self.period = output_dir, period
        self.window = defaultdict(list)
        self.history = []

    def after_step(self):
        collect(self.trainer.model, self.window)
        if (self.trainer.iter + 1) % self.period == 0 or self.trainer.iter + 1 == self.trainer.max_iter:
            means = summary(self.window)
            self.trainer.storage.put_scalars(**{f"routing/{k}": v for k, v in means.items()}, smoothing_hint=False)
            self.history.append({"iteration": self.trainer.iter, **means})
            self.last_window, self.window = dict(self.window), defaultdict(list)

    def after_train(self):
        if not comm.is_main_process() or not self.history:
            return
        model = self.trainer.model.module if hasattr(self.trainer.model, "module") else self.trainer.model
        with open(os.path.join(self.output_dir, "routing_train.json"), "w") as f:
            json.dump(self.history, f)
        png = plot_routing(self.last_window, model.transformer.num_queries, os.path.join(self.output_dir, "routing_train.png"),
                           f"queries passing each routed layer, last {self.period} training iterations")
        print(f"Routing statistics (training): {os.path.abspath(png)}", flush=True)


@torch.no_grad()
def evaluate_routing(model, data_loader, max_batches=None) -> Dict[str, List[int]]:
    """Passed-query counts per routed layer over ``data_loader`` in eval mode (Table 2 / Fig. 4)."""
    counts = defaultdict(list)
    model.eval()
    for i, batch in enumerate(data_loader):
        if max_batches is not None and i >= max_batches:
            break
        model(batch)
        collect(model, counts)
    return dict(counts)
