from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from detr_plus.compat import HAS_D2_EXTENSION
from detr_plus.data import DetrDatasetMapper, ResumableTrainLoader, build_detr_test_augmentation, build_detr_train_augmentation

# COCO 2017 through Detectron2's builtin registration: $DETECTRON2_DATASETS/coco/{train2017,val2017,annotations}.
dataloader = OmegaConf.create()
dataloader.train = L(ResumableTrainLoader)(
    dataset="coco_2017_train",
    mapper=L(DetrDatasetMapper)(is_train=True, augmentations=L(build_detr_train_augmentation)(), image_format="RGB"),
    total_batch_size=16,
    num_workers=4,
    seed=42,
    max_unreadable_fraction=0.01,  # unreadable images are skipped; more than 1% of the set stops the run
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    # an unreadable image is evaluated as a black one (its objects missed) and reported
    mapper=L(DetrDatasetMapper)(is_train=False, augmentations=L(build_detr_test_augmentation)(), image_format="RGB",
                                unreadable="blank"),
    num_workers=4,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", output_dir=None, use_fast_impl=HAS_D2_EXTENSION)
