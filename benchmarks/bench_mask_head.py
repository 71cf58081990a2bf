"""What the mask head (issue #32) costs in training: one step of a config without and with it
(``configs/common/masks.py``), each in a fresh process, and the memory autograd keeps for backward:

    python benchmarks/bench_mask_head.py --config-file BOX_CONFIG --masks-config MASK_CONFIG [--image-size H W] [--batch-size 1 2]

The measures are those of ``bench_activation_memory.py`` (saved-for-backward bytes, step seconds,
peak RSS growth during the step); the images are random with 5 random boxes whose rectangles are the
masks. Inference cost is not measured here; at inference the head decodes the kept queries' masks
only (at most ``select_box_nums_for_evaluation`` of them).
"""
import argparse

from bench_activation_memory import in_child, step_in_child


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="the model without masks")
    parser.add_argument("--masks-config", required=True, help="the same model with the mask head")
    parser.add_argument("--image-size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1, 2])
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value (both configs)")
    args = parser.parse_args(argv)
    print(f"{args.config_file} vs {args.masks_config}, {args.image_size[0]}x{args.image_size[1]}")
    print("| batch | model | saved for backward | step | peak RSS growth in the step |\n|---|---|---|---|---|")
    rows = []
    for batch_size in args.batch_size:
        for label, config in (("boxes", args.config_file), ("boxes + masks", args.masks_config)):
            saved = in_child("saved_bytes", config, args.opts, batch_size, args.image_size)
            step = step_in_child(config, args.opts, batch_size, args.image_size)
            rows.append({"batch": batch_size, "model": label, "saved": saved, "step": step})
            if saved is None or step is None:
                print(f"| {batch_size} | {label} | killed (out of memory) | | |", flush=True)
                continue
            print(f"| {batch_size} | {label} | {saved['saved_bytes'] / 2**20:.0f} MB | {step['step_s']:.2f} s | "
                  f"{step['peak_growth_bytes'] / 2**20:.0f} MB |", flush=True)
    return rows


if __name__ == "__main__":
    main()
