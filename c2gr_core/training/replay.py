"""Replay sets kept on disk, so memory stays bounded as the stream grows.

A generative method writes the pairs it synthesises for each past task as .npy files (images in
float16 to halve the disk cost; masks uint8) and training reads them back memory-mapped. Raw-data
replay (the privacy-breaking reference) uses the same store.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class PairBatch:
    """A batch of image-mask pairs, current or replayed, each with the stream index of its task."""
    images: torch.Tensor   # (B, 3, H, W) float32
    masks: torch.Tensor    # (B, H, W) long
    tasks: torch.Tensor    # (B,) long: stream index of the task each pair belongs to


ReplayBatch = PairBatch  # the name before 0.2


_SCRATCH = re.compile(r"task_\d+_(images|masks)(\.tmp)?\.npy")


def is_scratch_file(name: str) -> bool:
    """Whether a file name is one a ReplayStore writes (the run removes these, and nothing else)."""
    return _SCRATCH.fullmatch(name) is not None


class ReplayStore:
    """Pairs per past task under `root/task_XX_{images,masks}.npy`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _paths(self, task: int) -> tuple[Path, Path]:
        return self.root / f"task_{task:02d}_images.npy", self.root / f"task_{task:02d}_masks.npy"

    def put(self, task: int, images: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> None:
        images = np.asarray(images.cpu() if torch.is_tensor(images) else images, dtype=np.float16)
        masks = np.asarray(masks.cpu() if torch.is_tensor(masks) else masks, dtype=np.uint8)
        if len(images) != len(masks) or len(images) == 0:
            raise ValueError(f"replay for task {task}: {len(images)} images vs {len(masks)} masks")
        pi, pm = self._paths(task)
        for path, arr in ((pi, images), (pm, masks)):
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            tmp.replace(path)
        self._cache.pop(task, None)

    def tasks(self) -> list[int]:
        return sorted(int(p.name[5:7]) for p in self.root.glob("task_*_images.npy"))

    def get(self, task: int) -> tuple[np.ndarray, np.ndarray]:
        if task not in self._cache:
            pi, pm = self._paths(task)
            self._cache[task] = (np.load(pi, mmap_mode="r"), np.load(pm, mmap_mode="r"))
        return self._cache[task]

    def __len__(self) -> int:
        return sum(len(self.get(t)[0]) for t in self.tasks())

    def sample(self, batch_size: int, rng: np.random.Generator) -> PairBatch | None:
        """A batch stratified over past tasks: each task gets batch_size / n_tasks pairs.

        Equal shares make the batch mean an unbiased estimate of the 1/(t-1) sum over replay
        sets in eq. (7)-(8) while one forward serves all past tasks (cost independent of t).
        """
        tasks = self.tasks()
        if not tasks:
            return None
        owner = np.array([tasks[i % len(tasks)] for i in range(batch_size)])
        rng.shuffle(owner)
        imgs, msks = [], []
        for task in owner:
            x, y = self.get(int(task))
            k = int(rng.integers(len(x)))
            imgs.append(np.asarray(x[k], dtype=np.float32))
            msks.append(np.asarray(y[k]))
        return PairBatch(torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(msks)).long(),
                           torch.from_numpy(owner).long())

    def clear(self) -> None:
        self._cache.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        for p in self.root.iterdir():
            if is_scratch_file(p.name):  # a file we did not write stays (and is never read)
                p.unlink()
