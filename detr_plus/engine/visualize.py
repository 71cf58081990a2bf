"""PNGs a person would rather look at than read: training curves and drawn detections."""
import json
import os

import numpy as np


def plot_training_curves(metrics_json, out_png):
    """Total loss (and bbox AP where evaluated) against iteration from Detectron2's metrics.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_json) if line.strip()]
    loss = [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r]
    ap = [(r["iteration"], r["bbox/AP"]) for r in rows if "bbox/AP" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss:
        ax.plot(*zip(*loss), label="total loss", color="tab:blue")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if ap:
        ax2 = ax.twinx()
        ax2.plot(*zip(*ap), "o-", color="tab:orange", label="bbox AP")
        ax2.set_ylabel("bbox AP")
    ax.set_title(os.path.dirname(os.path.abspath(metrics_json)))
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def draw_detections(model, dataset_dicts, mapper, metadata, out_png, score_threshold=0.3, max_images=4):
    """Run ``model`` on the first ``max_images`` readable images and tile Detectron2 ``Visualizer``
    drawings into one PNG (None when no image could be read)."""
    import torch
    from detectron2.utils.visualizer import Visualizer

    from ..data.mapper import IMAGE_ERRORS, read_image_checked

    tiles = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for record in dataset_dicts:
            if len(tiles) == max_images:
                break
            try:
                image = read_image_checked(record["file_name"], "RGB")
            except IMAGE_ERRORS:  # reported by the evaluation already
                continue
            inputs = mapper(dict(record))
            instances = model([inputs])[0]["instances"].to("cpu")
            instances = instances[instances.scores >= score_threshold]
            tiles.append(Visualizer(image, metadata, scale=2.0).draw_instance_predictions(instances).get_image())
    model.train(was_training)
    if not tiles:
        return None
    height = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0)), constant_values=255) for t in tiles]
    from PIL import Image

    Image.fromarray(np.concatenate(tiles, 1)).save(out_png)
    return out_png


def run_name(output_dir: str) -> str:
    """A run's name from how it was started (log.txt's command line): the config file's stem and its
    overrides (last key component = value), except train.output_dir; the folder name without a log."""
    import ast
    import re

    log = os.path.join(output_dir, "log.txt")
    line = next((text for text in open(log) if "Command line arguments:" in text), "") if os.path.exists(log) else ""
    config = re.search(r"config_file='([^']*)'", line)
    if not config:
        return os.path.basename(os.path.normpath(output_dir))
    opts = re.search(r"opts=(\[.*?\])\)", line)
    overrides = ast.literal_eval(opts.group(1)) if opts else []
    shown = [o.split(".")[-1] for o in overrides if "=" in o and not o.startswith(("train.output_dir=", "+train.output_dir="))]
    return " ".join([os.path.splitext(os.path.basename(config.group(1)))[0], *shown])


def plot_runs(output_dirs, out_png, metric="bbox/AP"):
    """Several runs on one figure: ``metric`` (left) and the total loss (right) against iteration, one
    colour per run, named by ``run_name``. A folder without metrics.json raises, naming it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_metric, ax_loss) = plt.subplots(1, 2, figsize=(13, 4.5))
    for index, output_dir in enumerate(output_dirs):
        color = f"C{index % 10}"  # one colour per run in both panels
        metrics = os.path.join(output_dir, "metrics.json")
        if not os.path.exists(metrics):
            raise FileNotFoundError(f"{metrics}: no metrics.json (is {output_dir} a train_net.py output directory?)")
        rows = [json.loads(line) for line in open(metrics) if line.strip()]
        name = run_name(output_dir)
        values = [(r["iteration"], r[metric]) for r in rows if metric in r]
        loss = [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r]
        if values:
            ax_metric.plot(*zip(*values), "o-", color=color)
        if loss:
            ax_loss.plot(*zip(*loss), color=color, linewidth=1)
        ax_loss.plot([], [], color=color, label=name)  # every run in the legend, with or without points
    ax_metric.set(xlabel="iteration", ylabel=metric, title=metric)
    ax_loss.set(xlabel="iteration", ylabel="total loss", title="total loss")
    for ax in (ax_metric, ax_loss):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
