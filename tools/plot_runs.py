#!/usr/bin/env python
"""Several training runs on one figure: AP and total loss against iteration, each run named by its
config and overrides (read from its log.txt).

    python tools/plot_runs.py output/run_a output/run_b ... [--output runs.png] [--metric bbox/AP50]
"""
import argparse
import os

from detr_plus.engine.visualize import plot_runs, run_name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dirs", nargs="+", help="train_net.py output directories (with metrics.json)")
    parser.add_argument("--output", default="runs.png", help="the PNG to write (default runs.png)")
    parser.add_argument("--metric", default="bbox/AP", help="evaluation metric of metrics.json (default bbox/AP)")
    args = parser.parse_args(argv)
    png = plot_runs(args.output_dirs, args.output, args.metric)
    for output_dir in args.output_dirs:
        print(f"  {output_dir}: {run_name(output_dir)}")
    print(f"Runs plotted: {os.path.abspath(png)}")


if __name__ == "__main__":
    main()
