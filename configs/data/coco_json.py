"""Any COCO-format detection dataset, named on the command line (README "Train on your own data"):

    python train_net.py --config-file configs/custom/deformable_detr_plusplus_r50_12ep_custom.py \
        data.train_json=TRAIN.json data.train_images=TRAIN_DIR data.val_json=VAL.json data.val_images=VAL_DIR

``train_net.py`` registers them as ``custom_train`` / ``custom_val`` (with the load-time checks of
``detr_plus/data/checks.py``) and sets ``data.num_classes`` from the training json's categories
(a given value must match it); model configs read ``model.transformer.num_classes`` from it.
"""
from omegaconf import OmegaConf

from .coco import dataloader

data = OmegaConf.create(dict(train_json=None, train_images=None, val_json=None, val_images=None, num_classes=None))

dataloader.train.dataset = "custom_train"
dataloader.test.dataset.names = "custom_val"
