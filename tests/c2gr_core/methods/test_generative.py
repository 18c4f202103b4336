"""What every generative-replay method shares: the generator's budget (gen_epochs, gen_lr), the EMA
that samples replay, its place in the round checkpoint, and resume with EMA on."""
import json

import numpy as np
import pytest
import torch

from c2gr_core.training.access import TaskAccess
from c2gr_core.diffusion import reverse_chain, sample_pairs
from c2gr_core.methods import get_method
from c2gr_core.experiment.runs import method_context
from c2gr_core.experiment.runner import load_stream_task, resolve_entries, run_stream
from data_catalog.catalog import entry_card
from tiny_runs import interrupt_and_resume, small_cfg

GENERATIVE = ["c2gr", "c2gr-njd", "c2gr-norups", "cgr", "gr"]
STREAM = ["synthetic:fundus-a", "synthetic:mms-a"]


def build(method: str, tmp_path, **train):
    cfg = small_cfg()
    for k, v in train.items():
        setattr(cfg.train, k, v)
    entries = resolve_entries(STREAM)
    cards = [entry_card(e) for e in entries]
    torch.manual_seed(0)
    m = get_method(method)(method_context(cfg, cards, work_dir=tmp_path / "work"))
    access = TaskAccess(cards, lambda j: load_stream_task(entries, j, cfg))
    access.begin_round(0)
    return m, access


def denoiser_of(m):
    return m.model.denoiser if hasattr(m, "model") else m.denoiser


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def segmentor_and_prompt(m):
    if hasattr(m, "model"):
        mods = {"seg": m.model.segmentor}
        mods.update({"prompt": m.model.prompt} if m.model.rups else {"seg_prompt": m.model.seg_prompt})
        return mods
    return {"seg": m.segmentor, "seg_prompt": m.seg_prompt}


@pytest.mark.parametrize("method", GENERATIVE)
def test_generator_gets_gen_epochs_and_the_segmentor_epochs(method, tmp_path):
    m, access = build(method, tmp_path, epochs=1, gen_epochs=3)
    hist = m.fit(0, access, None)
    spe = 2  # 16 training pairs, batch 8
    assert len(hist["gen_cur"]) == 3 * spe
    assert len(hist["seg_cur"]) == 1 * spe


@pytest.mark.parametrize("method", ["c2gr", "c2gr-norups", "cgr", "gr"])
def test_extra_generator_epochs_leave_the_segmentor_and_its_prompts_alone(method, tmp_path):
    """Same seed, gen_epochs 1 vs 2: the segmentor side ends identical, the denoiser does not."""
    a, acc_a = build(method, tmp_path / "a", epochs=1, gen_epochs=1)
    b, acc_b = build(method, tmp_path / "b", epochs=1, gen_epochs=2)
    for m, acc in ((a, acc_a), (b, acc_b)):
        torch.manual_seed(1)
        m.fit(0, acc, None)
    for name, mod in segmentor_and_prompt(a).items():
        other = segmentor_and_prompt(b)[name]
        for (k, v), w in zip(mod.state_dict().items(), other.state_dict().values()):
            assert torch.equal(v, w), f"{method}: {name}.{k} moved during generator-only epochs"
    da, db = denoiser_of(a).state_dict(), denoiser_of(b).state_dict()
    assert any(not torch.equal(da[k], db[k]) for k in da)


@pytest.mark.parametrize("method", ["c2gr", "gr"])
def test_seg_lr_and_gen_lr_are_honoured(method, tmp_path):
    m, access = build(method, tmp_path, epochs=1, seg_lr=1e-12, gen_lr=1e-2)
    seg0, den0 = snapshot(segmentor_and_prompt(m)["seg"]), snapshot(denoiser_of(m))
    m.fit(0, access, None)
    seg1, den1 = snapshot(segmentor_and_prompt(m)["seg"]), snapshot(denoiser_of(m))
    # Adam moves each weight by about lr per step: 1e-12 leaves the segmentor in place
    assert max((seg1[k] - seg0[k]).abs().max().item() for k in seg0) < 1e-9
    assert max((den1[k] - den0[k]).abs().max().item() for k in den0) > 1e-3


@pytest.mark.parametrize("field, value", [("gen_epochs", 0), ("gen_epochs", 1.5), ("gen_lr", 0.0), ("gen_lr", "x")])
def test_bad_generator_budget_is_refused_before_training(field, value, tmp_path):
    with pytest.raises(ValueError, match=f"train.{field}"):
        build("c2gr", tmp_path, epochs=1, **{field: value})


@pytest.mark.parametrize("method", ["c2gr", "gr"])
def test_replay_is_sampled_by_the_ema(method, tmp_path):
    m, access = build(method, tmp_path, epochs=2)
    assert m.ema is not None and m.replay_denoiser is m.ema.module
    m.fit(0, access, None)
    raw, ema = denoiser_of(m).state_dict(), m.ema.module.state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the EMA lags the trained weights
    store = m.replay(1)
    images, masks = store.get(0)
    cfg = m.ctx.cfg
    gen = torch.Generator().manual_seed(m.ctx.round_seed(1, salt=100))
    if method == "c2gr":
        _, z = m.model.prompts(m.ctx.emb, 0)
        exp_img, exp_lab = sample_pairs(m.ema.module, z[0], len(images), 32, m.model.codec, cfg=cfg.diffusion,
                                        generator=gen)
        exp_lab[exp_lab > m.ctx.cards[0].n_classes] = 0  # labels the task lacks become background
        assert np.array_equal(np.asarray(masks), exp_lab.numpy().astype(np.uint8))
    else:
        z = m.gen_prompt((m.ctx.emb.e[:1], {s: c[:1] for s, c in m.ctx.emb.components.items()}))
        exp_img = reverse_chain(m.ema.module, z[0], len(images), 3, 32, cfg=cfg.diffusion, generator=gen)
    assert np.allclose(np.asarray(images, np.float32), exp_img.clamp(-1, 1).numpy(), atol=1e-3)  # stored as float16


def test_no_ema_samples_with_the_trained_weights(tmp_path):
    with_ema, _ = build("c2gr", tmp_path)
    m, _ = build("c2gr", tmp_path / "b")
    m.ctx.cfg.diffusion.ema_decay = 0.0
    plain = type(m)(m.ctx)
    assert plain.ema is None and plain.replay_denoiser is plain.model.denoiser
    assert "ema" not in plain.state_dict()["modules"] and "ema" in with_ema.state_dict()["modules"]


def test_ema_is_in_the_checkpoint_and_resume_is_bit_equal(tmp_path):
    """Kill in round 2 (after round 1 committed), resume: every checkpoint tensor, EMA included, and
    the matrix equal the uninterrupted run's (same machine and threads: bit-equality is the point)."""
    stream = STREAM + ["synthetic:busi"]

    def cfg():
        c = small_cfg()
        c.train.gen_epochs = 2
        return c

    full = run_stream(stream, "c2gr", cfg(), tmp_path / "full", progress=False)

    resumed = interrupt_and_resume(stream, "c2gr", cfg, tmp_path / "cut")
    np.testing.assert_array_equal(np.nan_to_num(resumed.matrix, nan=-1), np.nan_to_num(full.matrix, nan=-1))
    a = torch.load(tmp_path / "full" / "checkpoints" / "round_02.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "round_02.pt", weights_only=True)
    assert set(a["modules"]) == {"model", "ema"}
    assert int(a["modules"]["ema"]["n_averaged"]) == 3 * 2 * 2  # 3 rounds x gen_epochs 2 x 2 steps
    for name in a["modules"]:
        for k, v in a["modules"][name].items():
            assert torch.equal(v, b["modules"][name][k]), f"{name}.{k}"
    cfg_saved = json.loads((tmp_path / "full" / "config.json").read_text())
    # config.json records the recipe that was trained
    assert cfg_saved["diffusion"] == {**cfg().diffusion.__dict__} and cfg_saved["diffusion"]["prediction"] == "v"
    assert cfg_saved["train"]["gen_epochs"] == 2 and cfg_saved["diffusion"]["ema_decay"] > 0


@pytest.mark.parametrize("method", ["c2gr", "gr"])
def test_replay_target_teacher_freezes_the_generator_as_the_round_began(method, tmp_path):
    m, access = build(method, tmp_path, epochs=1)
    m.ctx.cfg.diffusion.replay_target = "teacher"
    m.fit(0, access, None)
    store = m.replay(1)
    net, prompts = m.teacher
    start = {k: v.clone() for k, v in net.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in m.ema.module.state_dict().items())   # the EMA as it stood
    assert prompts.shape[0] == 1 and not prompts.requires_grad and not any(p.requires_grad for p in net.parameters())
    access.begin_round(1)
    hist = m.fit(1, access, store)
    assert len(hist["gen_rep"]) > 0 and all(np.isfinite(hist["gen_rep"]))
    assert all(torch.equal(start[k], v) for k, v in net.state_dict().items())            # never trained
    m.ctx.cfg.diffusion.replay_target = "data"
    m.replay(2)
    assert m.teacher is None
