#!/usr/bin/env python
"""Train / evaluate a detr_plus LazyConfig, the Detectron2/detrex way:

    python train_net.py --config-file CONFIG [--eval-only] [--resume] [--num-gpus N] key=value ...
"""
import logging
import os

import detr_plus  # noqa: F401  (applies the detectron2 compatibility layer first)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detr_plus.data import check_dataset_available
from detr_plus.data.loader import ReportingTestLoader
from detr_plus.data.custom import register_config_datasets
from detr_plus.engine.checkpoint import check_checkpoint_matches, load_modules
from detr_plus.engine.config import apply_overrides, resolve_device
from detr_plus.engine.ema import ModelEMA
from detr_plus.engine.hooks import EMAHook, KeepBestCheckpoint, resolve_stop_update_iter, unwrap
from detr_plus.engine.launch import create_ddp_model, launch
from detr_plus.engine.trainer import DetrTrainer, NonFiniteLossError
from detr_plus.engine.writers import default_writers

logger = logging.getLogger("detr_plus")


def build_evaluator(cfg):
    evaluator_cfg = cfg.dataloader.evaluator
    check_dataset_available(evaluator_cfg.dataset_name)
    if evaluator_cfg.get("output_dir") is None:
        evaluator_cfg.output_dir = os.path.join(cfg.train.output_dir, "inference")
    return instantiate(evaluator_cfg)


def do_test(cfg, model, ema=None):
    """COCO evaluation of ``model`` (or of its EMA when ``train.ema.eval_with_ema``)."""
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator = build_evaluator(cfg)
    evaluated = ema.module if ema is not None and cfg.train.ema.get("eval_with_ema", False) else unwrap(model)
    results = inference_on_dataset(evaluated, ReportingTestLoader(instantiate(cfg.dataloader.test)), evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_model(cfg):
    model = instantiate(cfg.model)
    model.to(resolve_device(cfg.train.get("device", "auto")))
    logger.info(f"Model parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    return model


def build_ema(cfg, model):
    """The EMA of ``train.ema`` (also kept when the model reads an EMA teacher), or None."""
    ema_cfg = cfg.train.get("ema", {})
    enabled = ema_cfg.get("enabled", False)
    if getattr(model, "requires_teacher", False) and not enabled:
        logger.info("The model reads an EMA teacher: keeping the EMA of train.ema although train.ema.enabled=False")
        enabled = True
    return ModelEMA(model, ema_cfg.get("decay", 0.9997), ema_cfg.get("warmup_iters", 0)) if enabled else None


def check_initial_weights(cfg, model):
    """``train.init_checkpoint`` must fit the model, except the class heads when
    ``train.reinit_class_heads`` (fine-tuning on other classes): those keep their initialisation,
    said in one line."""
    reinitialised = check_checkpoint_matches(model, cfg.train.init_checkpoint, new_classes=cfg.train.get("reinit_class_heads", False))
    if reinitialised:
        logger.info(f"train.reinit_class_heads: re-initialised {len(reinitialised)} class-head tensors for "
                    f"{model.state_dict()[reinitialised[0]].shape[0]} classes: {', '.join(reinitialised)}; every other tensor "
                    f"comes from {cfg.train.init_checkpoint}")


def keep_best_checkpoint(cfg, checkpointer):
    """``train.best_checkpoint``: model_best.pth by its metric (after the evaluation hook), or None."""
    best = cfg.train.get("best_checkpoint") or {}
    if not best.get("metric") or "evaluator" not in cfg.dataloader or cfg.train.eval_period <= 0:
        return None
    return KeepBestCheckpoint(cfg.train.eval_period, checkpointer, best["metric"], best.get("mode", "max"))


def do_train(args, cfg):
    model = build_model(cfg)
    cfg.optimizer.model = model
    optimizer = instantiate(cfg.optimizer)
    ema = build_ema(cfg, model)
    train_loader = instantiate(cfg.dataloader.train)
    ddp_model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    latest_results = {}  # the EvalHook also evaluates after the last iteration
    trainer = DetrTrainer(ddp_model, train_loader, optimizer, cfg.train.clip_grad_norm, cfg.train.amp.enabled,
                          cfg.train.amp.get("dtype", "auto"))
    trainer.ema = ema  # for hooks that read the EMA / teacher
    checkpointables = {"ema": ema} if ema is not None else {}
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer, **checkpointables)
    lr_multiplier = instantiate(cfg.lr_multiplier)
    stop_update_iter = None
    if ema is not None:
        stop_update_iter = resolve_stop_update_iter(cfg.train.ema.get("stop_update_iter"), lr_multiplier, cfg.train.max_iter)
        logger.info(f"EMA decay {ema.decay}, updates stop at iteration {stop_update_iter}")
    trainer.register_hooks([
        hooks.IterationTimer(),
        EMAHook(ema, stop_update_iter) if ema is not None else None,
        hooks.LRScheduler(scheduler=lr_multiplier),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: latest_results.update(do_test(cfg, model, ema)) or latest_results),
        keep_best_checkpoint(cfg, checkpointer),
        *[instantiate(hook) for hook in cfg.train.get("hooks", [])],
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    starting = cfg.train.init_checkpoint and not (args.resume and checkpointer.has_checkpoint())
    init_only = cfg.train.get("init_only")
    if starting and init_only:  # a part of another model's checkpoint (its backbone): loaded here, the rest stays
        count = load_modules(model, cfg.train.init_checkpoint, list(init_only))
        logger.info(f"train.init_only: loaded {count} tensors of {list(init_only)} from {cfg.train.init_checkpoint}")
    elif starting:
        check_initial_weights(cfg, model)
    checkpointer.resume_or_load("" if starting and init_only else cfg.train.init_checkpoint, resume=args.resume)
    if ema is not None:
        if not ema.restored:  # the EMA (and any teacher) starts from the loaded weights, not the random init
            ema.reset(model)
        if getattr(model, "requires_teacher", False):
            model.attach_teacher(ema.module)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    train_loader.set_start_iter(start_iter)
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except NonFiniteLossError:
        if comm.is_main_process():
            checkpointer.save(f"model_before_nonfinite_iter{trainer.iter:07d}")
            logger.error(f"Saved the last finite weights to {cfg.train.output_dir}/model_before_nonfinite_iter{trainer.iter:07d}.pth")
        raise
    return model, latest_results


def report(cfg, model, results):
    """Where everything went, plus the PNGs (training curves, detections on validation images)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from detr_plus.engine.visualize import draw_detections, plot_training_curves

    out = os.path.abspath(cfg.train.output_dir)
    lines = [f"Outputs in {out}:"]
    metrics = os.path.join(out, "metrics.json")
    if os.path.exists(metrics):
        lines.append(f"  training curves: {plot_training_curves(metrics, os.path.join(out, 'training_curves.png'))}")
    if "evaluator" in cfg.dataloader:
        name = cfg.dataloader.evaluator.dataset_name
        mapper = instantiate(cfg.dataloader.test.mapper)
        png = draw_detections(unwrap(model), DatasetCatalog.get(name), mapper, MetadataCatalog.get(name), os.path.join(out, "detections.png"))
        lines.append(f"  detections on {name}: {png or 'none drawn (no readable image)'}")
    if results:
        lines.append(f"  bbox AP: {results.get('bbox', {}).get('AP', float('nan')):.2f}")
    lines.append(f"  checkpoints, metrics.json, TensorBoard events: {out}")
    print("\n".join(lines), flush=True)


def checkpoint_ema(cfg, model, checkpoint):
    """The EMA saved in ``checkpoint`` when ``train.ema.enabled`` and ``eval_with_ema``, so --eval-only
    evaluates what the evaluation during training evaluated; None otherwise."""
    ema_cfg = cfg.train.get("ema", {})
    if not (ema_cfg.get("enabled", False) and ema_cfg.get("eval_with_ema", False)):
        return None
    if "ema" not in checkpoint:
        logger.warning("train.ema.eval_with_ema=True but the checkpoint has no EMA: evaluating its weights")
        return None
    ema = ModelEMA(model, ema_cfg.get("decay", 0.9997))
    ema.load_state_dict(checkpoint["ema"])
    return ema


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = apply_overrides(cfg, args.opts)
    register_config_datasets(cfg)  # a config's ``data`` section: your own COCO-format files
    default_setup(cfg, args)
    for name in ("detr_plus", "detr_plus_projects"):  # default_setup sets up detectron2's and fvcore's loggers only
        setup_logger(cfg.train.output_dir, comm.get_rank(), name=name, abbrev_name=name)
    if args.eval_only:
        model = build_model(cfg)
        if cfg.train.init_checkpoint and not args.resume:
            check_checkpoint_matches(model, cfg.train.init_checkpoint)
        # save_dir: --resume evaluates the last checkpoint of train.output_dir (not ./last_checkpoint).
        checkpoint = DetectionCheckpointer(model, cfg.train.output_dir).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        results = do_test(cfg, model, checkpoint_ema(cfg, model, checkpoint))
    else:
        model, results = do_train(args, cfg)
    if comm.is_main_process():
        report(cfg, model, results)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
