"""A small training loop with callbacks (minGPT's trainer is the model).

The loop knows nothing about segmentation or diffusion: a method hands it a `step_fn` that
takes a batch and returns a dict of scalar losses (the first key, "loss", is optimised). Progress
bars, plots and logging live in callbacks, so notebooks never edit the loop.

Under torchrun the loop runs the step through DistributedDataParallel (`distributed.LossStep` over
the trained parameters), so gradients are averaged across ranks during backward and no method has
to know about DDP; `batches(epoch)` must then yield this rank's shard (methods.base.epoch_batches).
bf16 autocast (amp_bf16) takes device_type from `device`, so it serves CPU and CUDA. Weights, gradients
and optimiser state stay fp32; the diffusion MSE casts to fp32 and cross-entropy is on autocast's fp32
list. CPU autocast also runs GroupNorm, LayerNorm and the Dice softmax in bf16 (CUDA keeps norms in
fp32); on the tiny nets that moves the losses by < 0.1% (tests/c2gr_core/test_distributed.py).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Callable, Iterable, Protocol

import torch

from . import distributed


class Callback(Protocol):
    def __call__(self, event: str, trainer: "Trainer") -> None: ...


class Trainer:
    EVENTS = ("on_train_start", "on_step_end", "on_epoch_end", "on_train_end")

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, amp_bf16: bool = False,
                 device: str = "cpu", grad_clip: float | None = 1.0,
                 callbacks: list[Callback] | None = None, optimizer: torch.optim.Optimizer | None = None,
                 find_unused_parameters: bool = False):
        # `params`: parameters, or torch param groups ({"params": [...], "lr": ...}) where parts of
        # one coupled model learn at their own rates (the generator's gen_lr).
        groups = list(params)
        if groups and isinstance(groups[0], dict):
            groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
            groups = [g for g in groups if g["params"]]
        else:
            groups = [{"params": [p for p in groups if p.requires_grad]}]
        self.params = [p for g in groups for p in g["params"]]
        self.find_unused_parameters = find_unused_parameters  # DDP only: see distributed.wrap
        # Adam with the paper's learning rate (sec. 4.2); one optimiser over everything that is coupled.
        self.optimizer = optimizer or torch.optim.Adam(groups, lr=lr)
        self.amp_bf16, self.device, self.grad_clip = amp_bf16, device, grad_clip
        self.callbacks = list(callbacks or [])
        self.step = 0
        self.epoch = 0
        self.n_steps = 0
        self.logs: dict[str, float] = {}
        self.history: dict[str, list[float]] = defaultdict(list)

    def add_callback(self, cb: Callback) -> None:
        self.callbacks.append(cb)

    def _emit(self, event: str) -> None:
        for cb in self.callbacks:
            cb(event, self)

    def autocast(self):
        if not self.amp_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    def fit(self, step_fn: Callable[[object], dict[str, torch.Tensor]],
            batches: Callable[[int], Iterable[object]], epochs: int, steps_per_epoch: int) -> dict[str, list[float]]:
        """Run `epochs` passes; `batches(epoch)` yields the batches of one epoch."""
        self.n_steps = epochs * steps_per_epoch
        if distributed.is_distributed():
            step_fn = distributed.wrap(distributed.LossStep(step_fn, self.params), self.find_unused_parameters)
        with distributed.rank_torch_rng():  # per-rank timesteps/noise under DDP; no-op in one process
            self._loop(step_fn, batches, epochs, steps_per_epoch)
        return dict(self.history)

    def _loop(self, step_fn, batches, epochs: int, steps_per_epoch: int) -> None:
        self._emit("on_train_start")
        for self.epoch in range(epochs):
            n_batches = 0
            for batch in batches(self.epoch):
                n_batches += 1
                self._check_in_step(n_batches, steps_per_epoch)
                with self.autocast():
                    losses = step_fn(batch)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {self.step}: {({k: float(v.detach()) for k, v in losses.items()})}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
                self.optimizer.step()
                self.logs = {k: float(v.detach()) for k, v in losses.items()}
                for k, v in self.logs.items():
                    self.history[k].append(v)
                self.step += 1
                self._emit("on_step_end")
            self._check_in_step(n_batches, steps_per_epoch, epoch_done=True)
            self._emit("on_epoch_end")
        self._emit("on_train_end")

    def _check_in_step(self, n: int, expected: int, epoch_done: bool = False) -> None:
        # A rank running more or fewer steps than the others would wait forever in DDP's all-reduce;
        # failing here lets torchrun stop the whole group with a reason.
        if distributed.is_distributed() and (n > expected or (epoch_done and n != expected)):
            raise RuntimeError(f"rank {distributed.rank()} got {n} batches in epoch {self.epoch}, expected "
                               f"{expected} like every rank: shard the data with methods.base.epoch_batches")


class TqdmCallback:
    """A progress bar over training steps showing the latest losses."""

    def __init__(self, desc: str = "train", leave: bool = False, disable: bool | None = None):
        self.desc, self.leave, self.disable = desc, leave, disable
        self.bar = None

    def __call__(self, event: str, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        if event == "on_train_start":
            self.bar = tqdm(total=trainer.n_steps, desc=self.desc, leave=self.leave, disable=self.disable)
        elif event == "on_step_end" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in list(trainer.logs.items())[:4]})
        elif event == "on_train_end" and self.bar is not None:
            self.bar.close()
