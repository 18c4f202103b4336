"""Coupled optimisation (eq. 7-9): what each loss reaches, and the replay averaging."""
import pytest
import torch

from c2gr_core.config import preset
from c2gr_core.methods.coupled import C2GRModel, PairBatch, coupled_loss, prompt_pool
from c2gr_core.diffusion import make_scheduler
from c2gr_core.prompting.prompts import encode_tasks
from c2gr_core.prompting.text_encoders import HashEncoder
from data_catalog.schema import card_from_dict

CARDS = [card_from_dict({"name": n, "modality": m, "anatomy": a, "objective": o, "classes": c})
         for n, m, a, o, c in [("t0", "MR", "heart", "cardiac segmentation", ["lv", "myo", "rv"]),
                               ("t1", "CT", "abdomen", "liver segmentation", ["liver", "tumour"]),
                               ("t2", "ultrasound", "breast", "tumour segmentation", ["tumour"])]]
N_CLASSES = torch.tensor([3, 2, 1])


@pytest.fixture(scope="module")
def emb():
    return encode_tasks(CARDS, HashEncoder(dim=16))


def batch(task, n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    y = torch.randint(0, int(N_CLASSES[task]) + 1, (n, size, size), generator=g)
    return PairBatch(x, y, torch.full((n,), task))


def model(emb, rups=True):
    cfg = preset("tiny")
    cfg.prompt.rups = rups
    torch.manual_seed(0)
    m = C2GRModel(cfg, c_max=3, emb=emb)
    # MONAI zero-initialises the denoiser's output and attention projections, so at step 0 no
    # gradient flows past them; a small perturbation stands in for a model that has trained a bit.
    with torch.no_grad():
        for p in m.denoiser.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m, make_scheduler(cfg.diffusion, "ddpm")


def grads(module):
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_segmentation_loss_reaches_prompt_graph(emb):
    m, sched = model(emb)
    out = coupled_loss(m, emb, 1, batch(1), batch(0), sched, N_CLASSES, train_generator=False)
    out["loss"].backward()
    assert set(out) >= {"seg_cur", "seg_rep"} and "gen_cur" not in out
    assert grads(m.prompt) and grads(m.segmentor) and not grads(m.denoiser)


def test_diffusion_loss_reaches_prompt_graph_through_shared_prompt(emb):
    m, sched = model(emb)
    out = coupled_loss(m, emb, 1, batch(1), batch(0), sched, N_CLASSES, train_segmentor=False)
    out["loss"].backward()
    assert grads(m.prompt) and grads(m.denoiser) and not grads(m.segmentor)


def test_total_is_L_ME_plus_L_MU(emb):
    m, sched = model(emb)
    torch.manual_seed(3)
    out = coupled_loss(m, emb, 2, batch(2), batch(0), sched, N_CLASSES)
    assert torch.allclose(out["loss"], out["seg_cur"] + out["seg_rep"] + out["gen_cur"] + out["gen_rep"])
    assert torch.allclose(out["L_ME"], out["seg_cur"] + out["seg_rep"])


def test_without_rups_nothing_is_shared(emb):
    m, sched = model(emb, rups=False)
    out = coupled_loss(m, emb, 1, batch(1), None, sched, N_CLASSES, train_segmentor=False)
    out["loss"].backward()
    assert grads(m.gen_prompt) and not grads(m.seg_prompt)
    z_seg, z_gen = m.prompts(emb, 1)
    assert not torch.allclose(z_seg, z_gen)


def test_rups_gives_both_networks_the_same_prompt_over_the_seen_pool(emb):
    m, _ = model(emb)
    z_seg, z_gen = m.prompts(emb, 1)
    assert z_seg is z_gen and z_seg.shape == (2, preset("tiny").prompt.node_dim)
    e, comps = prompt_pool(emb, 1)
    assert e.shape[0] == 2 and all(c.shape[0] == 2 for c in comps.values())


def test_stratified_replay_batch_matches_the_1_over_t_minus_1_average(emb):
    """eq. 7 averages per-replay-set losses; with equal shares per task, a per-sample loss mean
    equals that average. Checked with the CE-only segmentation term computed per set by hand."""
    from c2gr_core.losses import ce_loss

    m, _ = model(emb)
    z, _ = m.prompts(emb, 2)
    sets = [batch(0, n=2, seed=1), batch(1, n=2, seed=2)]
    per_set = [ce_loss(m.segmentor(b.images, z[b.tasks]), b.masks, N_CLASSES[b.tasks]) for b in sets]
    mixed = PairBatch(torch.cat([b.images for b in sets]), torch.cat([b.masks for b in sets]),
                      torch.cat([b.tasks for b in sets]))
    pooled = ce_loss(m.segmentor(mixed.images, z[mixed.tasks]), mixed.masks, N_CLASSES[mixed.tasks])
    assert torch.allclose(pooled, sum(per_set) / len(per_set), atol=1e-5)


@pytest.mark.parametrize("one_forward", [True, False])
@pytest.mark.parametrize("objective, balance_by, terms", [
    ("bjd", "pixel", "all"), ("njd", "pixel", "all"), ("bjd", "channel", "all"), ("njd", "channel", "all"),
    ("bjd", "timestep", "all"), ("bjd", "timestep", "one"), ("njd", "timestep", "one")])
def test_one_forward_for_both_batches_gives_the_losses_of_separate_forwards(emb, objective, balance_by, terms,
                                                                           one_forward):
    """coupled_loss runs current + replay through each network at once (or, with one_forward=False,
    batch by batch: a run picks whichever is faster); the reference below is the plain per-batch
    computation (one segmentor and one denoiser forward per batch, noise drawn batch by batch, the
    replay batch distilled from a teacher). Class-balanced weights by channel take
    each batch's own class shares, as separate forwards would; with diffusion.term_sampling "one" each
    batch draws its pairs' BJD terms after its noise, as a separate forward would."""
    from c2gr_core.diffusion import Teacher, joint_loss
    from c2gr_core.losses import seg_loss

    m, sched = model(emb)
    m.objective = m.diffusion_cfg.objective = objective
    m.diffusion_cfg.mask_balance, m.diffusion_cfg.mask_balance_by = 0.5, balance_by
    m.diffusion_cfg.term_sampling = terms
    teacher = (C2GRModel(preset("tiny"), c_max=3, emb=emb).denoiser.eval(), torch.randn(2, m.prompt.node_dim))
    cur, rep = batch(1, n=3, seed=1), batch(0, n=2, seed=2)
    torch.manual_seed(7)
    out = coupled_loss(m, emb, 1, cur, rep, sched, N_CLASSES, teacher=teacher, one_forward=one_forward)

    torch.manual_seed(7)
    z, _ = m.prompts(emb, 1)
    ref = {}
    for name, b in (("cur", cur), ("rep", rep)):
        ref[f"seg_{name}"] = seg_loss(m.segmentor(b.images, z[b.tasks]), b.masks, N_CLASSES[b.tasks], groups=b.tasks)
        tch = Teacher(teacher[0], teacher[1][b.tasks]) if name == "rep" else None
        ref[f"gen_{name}"] = joint_loss(m.diffusion_cfg, m.denoiser, b.images, m.codec.encode(b.masks), z[b.tasks],
                                        sched, teacher=tch).total
    for key, v in ref.items():
        torch.testing.assert_close(out[key], v, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(out["loss"], sum(ref.values()), rtol=1e-5, atol=1e-6)
