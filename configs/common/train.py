train = dict(
    output_dir="./output",
    init_checkpoint="",
    # Fine-tuning a checkpoint trained on other classes: load everything but the class heads (every
    # decoder layer's and the encoder's), which start from their initialisation.
    reinit_class_heads=False,
    # Load only these top-level modules of train.init_checkpoint (e.g. ["backbone"]: another detector's
    # trained backbone as the initialisation); None loads the whole checkpoint.
    init_only=None,
    max_iter=90000,
    device="auto",  # "cuda" if available else "cpu"
    seed=42,
    # Mixed precision: dtype "auto" = bfloat16 where the device has it, else float16 with a grad scaler.
    amp=dict(enabled=False, dtype="auto"),
    ddp=dict(find_unused_parameters=False),
    clip_grad_norm=0.1,
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=5000,
    # model_best.pth (+ model_best.json: value, iteration): the weights of the best evaluation by this
    # metric of the evaluation results ("bbox/AP"; "segm/AP", ...); metric=None keeps none.
    best_checkpoint=dict(metric="bbox/AP", mode="max"),
    log_period=20,
    # Model EMA (hook in detr_plus.engine.hooks), started from the loaded weights. stop_update_iter
    # freezes it (OD-DETR's Stop Update): None (never), an iteration, or "first_lr_decay".
    ema=dict(enabled=False, decay=0.9997, warmup_iters=0, stop_update_iter=None, eval_with_ema=False),
    hooks=[],  # extra Detectron2 hooks (LazyCall), appended after the evaluation hook
)
