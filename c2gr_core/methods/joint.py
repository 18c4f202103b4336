"""JointTrain: the upper reference that gathers the data of every task seen so far.

It breaks the task-incremental privacy constraint on purpose (reads_past_data), so it is marked
as not privacy-preserving in every output. Round t trains on the union of tasks 0..t, continuing
from the model of round t-1, so the matrix has a row per round like every other method.
"""
import numpy as np
import torch

from . import register
from .base import SegmentorMethod, epoch_batches


@register("joint")
class JointTrain(SegmentorMethod):
    privacy_preserving = False
    reads_past_data = True

    def current_batches(self, data, t, rng, task_ids=None):
        splits = [data.train(j) for j in range(t + 1)]
        owner = np.concatenate([np.full(len(s), j) for j, s in enumerate(splits)])
        local = np.concatenate([np.arange(len(s)) for s in splits])
        for idx in epoch_batches(len(owner), self.ctx.cfg.train.batch_size, rng):  # this rank's shard under DDP
            x = np.stack([splits[owner[i]].images[local[i]] for i in idx])
            y = np.stack([splits[owner[i]].masks[local[i]] for i in idx])
            yield torch.from_numpy(x), torch.from_numpy(y).long(), torch.from_numpy(owner[idx]).long()

    def n_train_pairs(self, data, t):
        return sum(len(data.train(j)) for j in range(t + 1))
