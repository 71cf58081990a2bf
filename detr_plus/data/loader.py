"""A training loader whose sample stream is a pure function of (seed, position), so ``--resume``
continues exactly where the interrupted run stopped: same images, same augmentations. An image that
cannot be read is skipped (the next one of the permutation takes its place), counted and logged."""
import copy
import logging
import random
from functools import lru_cache

import numpy as np
import torch
from detectron2.data import get_detection_dataset_dicts
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .mapper import IMAGE_ERRORS

logger = logging.getLogger(__name__)
SKIPPED_KEY = "skipped_unreadable"  # file names a sample replaced (removed before the model sees it)


class TooManyUnreadableImages(RuntimeError):
    pass


class _PositionedDataset(torch.utils.data.Dataset):
    """Item ``position`` = the dataset entry at that place of the seeded epoch permutation, mapped
    with numpy/random seeded by (seed, position) so augmentations are reproducible anywhere."""

    def __init__(self, dicts, mapper, seed):
        self.dicts, self.mapper, self.seed = dicts, mapper, seed

    @lru_cache(maxsize=2)
    def permutation(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dicts))

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, position):
        epoch, offset = divmod(position, len(self.dicts))
        sample_seed = np.random.SeedSequence([self.seed, position]).generate_state(1)[0]
        np.random.seed(sample_seed)
        random.seed(int(sample_seed))
        order, skipped = self.permutation(epoch), []
        for step in range(len(self.dicts)):  # an unreadable image: the next of the permutation instead
            try:
                sample = self.mapper(copy.deepcopy(self.dicts[order[(offset + step) % len(order)]]))
            except IMAGE_ERRORS as e:
                skipped.append(getattr(e, "file_name", None) or str(e))
                continue
            sample[SKIPPED_KEY] = skipped
            return sample
        raise TooManyUnreadableImages(f"none of the {len(self.dicts)} images of the training set could be read (first: {skipped[0]})")


class _PositionSampler(torch.utils.data.Sampler):
    def __init__(self, start, rank, world_size):
        self.start, self.rank, self.world_size = start, rank, world_size

    def __iter__(self):
        position = self.start
        while True:
            yield position * self.world_size + self.rank
            position += 1


class ResumableTrainLoader:
    """Infinite iterable of per-process batches (lists of mapped dicts). ``set_start_iter(i)`` makes
    the next ``iter()`` begin at iteration i; the stream is built lazily on the first ``next()``.

    ``max_unreadable_fraction``: the run stops with ``TooManyUnreadableImages`` once more than this
    share of the training set's distinct images turned out unreadable (``data/unreadable_images`` in
    the event storage counts them; each is logged once with its file name).
    """

    def __init__(self, dataset, mapper, total_batch_size, num_workers=0, seed=0, filter_empty=False,
                 max_unreadable_fraction=0.01):
        names = [dataset] if isinstance(dataset, str) else list(dataset)
        world = comm.get_world_size()
        if total_batch_size % world:
            raise ValueError(f"dataloader.train.total_batch_size={total_batch_size} is not divisible by {world} processes")
        self.batch_size = total_batch_size // world
        self.dataset = _PositionedDataset(get_detection_dataset_dicts(names, filter_empty=filter_empty), mapper, seed)
        self.num_workers, self.start_iter = num_workers, 0
        self.max_unreadable_fraction, self.unreadable = max_unreadable_fraction, {}  # file names, in the order met

    def set_start_iter(self, start_iter):
        self.start_iter = start_iter

    def __iter__(self):
        sampler = _PositionSampler(self.start_iter * self.batch_size, comm.get_rank(), comm.get_world_size())
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler,
                                             num_workers=self.num_workers, collate_fn=list,
                                             pin_memory=torch.cuda.is_available(), persistent_workers=False)
        for batch in loader:
            self.count_unreadable([name for sample in batch for name in sample.pop(SKIPPED_KEY, [])])
            yield batch

    def count_unreadable(self, names):
        new = [n for n in dict.fromkeys(names) if n not in self.unreadable]
        for name in new:
            logger.warning(f"Skipped an unreadable training image (another sample takes its place): {name}")
        self.unreadable.update(dict.fromkeys(new))
        try:
            get_event_storage().put_scalar("data/unreadable_images", len(self.unreadable), smoothing_hint=False)
        except AssertionError:  # iterated outside a trainer (no event storage)
            pass
        limit = self.max_unreadable_fraction * len(self.dataset)
        if len(self.unreadable) > limit:
            raise TooManyUnreadableImages(
                f"{len(self.unreadable)} of the {len(self.dataset)} training images are unreadable, more than "
                f"dataloader.train.max_unreadable_fraction={self.max_unreadable_fraction} allows "
                f"(first: {next(iter(self.unreadable))}); fix or remove them")


class ReportingTestLoader:
    """A test loader that logs, after each full pass, how many images the mapper could not read
    (``DetrDatasetMapper(unreadable="blank")`` marks them) and the first few file errors."""

    def __init__(self, loader):
        self.loader, self.unreadable = loader, []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.unreadable = []
        for batch in self.loader:
            self.unreadable += [x["unreadable"] for x in batch if "unreadable" in x]
            yield batch
        if self.unreadable:
            logger.warning(f"Evaluation: {len(self.unreadable)} image(s) were unreadable and "
                           f"evaluated as black images (first: {self.unreadable[0]})")
