"""Detectron2's writers: metric printer with ETA, metrics.json, and TensorBoard when installed."""
import os

from detectron2.utils.events import CommonMetricPrinter, JSONWriter


def default_writers(output_dir, max_iter):
    os.makedirs(output_dir, exist_ok=True)  # default_setup makes it, but do_train may be called without it
    writers = [CommonMetricPrinter(max_iter), JSONWriter(os.path.join(output_dir, "metrics.json"))]
    try:
        from detectron2.utils.events import TensorboardXWriter

        writers.append(TensorboardXWriter(output_dir))
    except ImportError:  # tensorboard is optional
        pass
    return writers
