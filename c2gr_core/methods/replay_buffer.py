"""Raw-data replay: a buffer of REAL training pairs of every past task (the privacy-breaking reference).

At the end of round t a fixed budget of task t's training pairs (cfg.train.replay_per_task, or
`fraction` of its training set) is copied into a ReplayStore under the run's work dir. Later
rounds train on each current batch plus an equally large batch drawn from the buffer, stratified
over past tasks: L = L_seg(current) + L_seg(buffer), the shape of eq. 7 with real pairs instead of
generated ones. Keeping real past data breaks the task-incremental privacy constraint, so the
method is marked privacy_preserving = False in every output.

Resume: the buffer stays on disk in work_dir until the run completes; the checkpoint records
which tasks it holds, and a round that is re-run after a crash first drops whatever that round
had already added.
"""
from __future__ import annotations

import numpy as np

from ..training import distributed
from ..training.replay import ReplayStore
from . import register
from .base import SegmentorMethod


class RealPairBuffer(ReplayStore):
    """A ReplayStore that can forget the tasks of an unfinished round and show only tasks < `below`."""

    def __init__(self, root, below: int | None = None):
        super().__init__(root)
        self.below = below

    def tasks(self) -> list[int]:
        return [j for j in super().tasks() if self.below is None or j < self.below]

    def drop_from(self, t: int) -> None:
        for j in self.tasks():
            if j >= t:
                for p in self._paths(j):
                    p.unlink(missing_ok=True)
                self._cache.pop(j, None)


@register("replay-buffer")
class ReplayBuffer(SegmentorMethod):
    privacy_preserving = False
    fraction = 0.1   # share of a task's training set kept when cfg.train.replay_per_task is None

    def __init__(self, ctx):
        super().__init__(ctx)
        self.buffer = RealPairBuffer(ctx.work_dir / "buffer")
        self.sizes: dict[int, int] = {}   # pairs held per past task (committed rounds only)
        self._rng = np.random.default_rng(0)
        self._past = self.buffer

    def budget(self, n_train: int) -> int:
        per_task = self.ctx.cfg.train.replay_per_task
        n = int(per_task) if per_task else max(1, round(self.fraction * n_train))
        return min(n, n_train)

    def before_round(self, t: int, data) -> None:
        self.buffer.drop_from(t)
        held = {j: len(self.buffer.get(j)[0]) for j in self.buffer.tasks()}
        lost = {j: n for j, n in self.sizes.items() if held.get(j) != n}
        if lost:
            raise FileNotFoundError(
                f"{self.buffer.root}: the real-pair buffer of past task(s) {sorted(lost)} is missing or "
                f"incomplete (expected {lost}, found {held}); the work dir of an interrupted run must be "
                "kept to resume it")
        # Under DDP each rank replays different buffer pairs (c2gr_core.training.distributed).
        self._rng = distributed.rank_generator(np.random.default_rng(self.ctx.round_seed(t, salt=5)))
        # What round t replays: the past tasks only, even once after_round(t) has added task t.
        self._past = RealPairBuffer(self.buffer.root, below=t)

    def replay(self, t: int) -> ReplayStore | None:
        return self._past if t > 0 else None

    def extra_loss(self, t, images, masks, prompts):
        if t == 0:
            return {}
        rep = self._past.sample(self.ctx.cfg.train.batch_size, self._rng)
        return {"seg_rep": self.seg_loss_on(rep.images, rep.masks, rep.tasks, prompts)}

    def after_round(self, t: int, data) -> None:
        split = data.train(t)
        n = self.budget(len(split))
        rng = np.random.default_rng(self.ctx.round_seed(t, salt=6))
        idx = np.sort(rng.choice(len(split), size=n, replace=False))
        self.buffer.put(t, np.asarray(split.images[idx]), np.asarray(split.masks[idx]))
        self.sizes[t] = n

    def extra_state(self) -> dict:
        return {"sizes": {str(k): v for k, v in self.sizes.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.sizes = {int(k): int(v) for k, v in state.get("sizes", {}).items()}
