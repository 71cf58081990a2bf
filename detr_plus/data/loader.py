"""A training loader whose sample stream is a pure function of (seed, position), so ``--resume``
continues exactly where the interrupted run stopped: same images, same augmentations."""
import copy
import random
from functools import lru_cache

import numpy as np
import torch
from detectron2.data import get_detection_dataset_dicts
from detectron2.utils import comm


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
        return self.mapper(copy.deepcopy(self.dicts[self.permutation(epoch)[offset]]))


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
    the next ``iter()`` begin at iteration i; the stream is built lazily on the first ``next()``."""

    def __init__(self, dataset, mapper, total_batch_size, num_workers=0, seed=0, filter_empty=False):
        names = [dataset] if isinstance(dataset, str) else list(dataset)
        world = comm.get_world_size()
        if total_batch_size % world:
            raise ValueError(f"dataloader.train.total_batch_size={total_batch_size} is not divisible by {world} processes")
        self.batch_size = total_batch_size // world
        self.dataset = _PositionedDataset(get_detection_dataset_dicts(names, filter_empty=filter_empty), mapper, seed)
        self.num_workers, self.start_iter = num_workers, 0

    def set_start_iter(self, start_iter):
        self.start_iter = start_iter

    def __iter__(self):
        sampler = _PositionSampler(self.start_iter * self.batch_size, comm.get_rank(), comm.get_world_size())
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler,
                                             num_workers=self.num_workers, collate_fn=list,
                                             persistent_workers=False)
        yield from loader
