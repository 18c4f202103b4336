"""The small training loop: it optimises "loss", fires its callbacks, and refuses NaN."""
import pytest
import torch

from c2gr_core.training.trainer import Trainer


def test_fit_minimises_and_fires_events_in_order():
    w = torch.nn.Parameter(torch.tensor([3.0]))
    events = []
    tr = Trainer([w], lr=0.1, grad_clip=None, callbacks=[lambda e, t: events.append((e, t.step))])
    hist = tr.fit(lambda b: {"loss": ((w - b) ** 2).sum(), "w": w.detach().sum()},
                  lambda epoch: iter([torch.tensor(1.0)] * 5), epochs=4, steps_per_epoch=5)
    assert abs(w.item() - 1.0) < abs(3.0 - 1.0) / 2          # moved towards the target
    assert len(hist["loss"]) == 20 and hist["loss"][-1] < hist["loss"][0]
    assert events[0] == ("on_train_start", 0) and events[-1] == ("on_train_end", 20)
    assert [e for e, _ in events].count("on_step_end") == 20
    assert [e for e, _ in events].count("on_epoch_end") == 4


def test_non_finite_loss_names_the_step():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    tr = Trainer([w], lr=0.1)
    with pytest.raises(FloatingPointError, match="step 0"):
        tr.fit(lambda b: {"loss": w.sum() * float("nan")}, lambda e: iter([None]), epochs=1, steps_per_epoch=1)
