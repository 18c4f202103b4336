"""The assembled C2GR learner: paper-preset sizes, and BJD training on one synthetic task."""
import torch

from c2gr_core.config import preset
from c2gr_core.methods.coupled import C2GRModel, PairBatch, coupled_loss
from c2gr_core.diffusion import make_scheduler, sample_pairs
from c2gr_core.prompting.prompts import encode_tasks
from c2gr_core.prompting.text_encoders import HashEncoder
from data_catalog.catalog import get_card
from data_catalog.synthetic import synthetic_task


def test_paper_preset_parameter_counts(capsys):
    cfg = preset("paper")
    cards = [get_card("fundus-a"), get_card("mms-a")]
    # CLIP weights are not on this machine; the 512-d hash encoder only sizes the input of W_E.
    emb = encode_tasks(cards, HashEncoder(dim=512))
    counts = C2GRModel(cfg, c_max=3, emb=emb).parameter_counts()
    print(counts)
    # Segmentor 32..512 with 13 cross-attentions of dim 768: ~51M; denoiser 128..512 with 2 res
    # blocks and attention on the three deepest levels: ~184M; graph (node 512, q 256): ~2M.
    assert 45e6 < counts["segmentor"] < 60e6
    assert 150e6 < counts["denoiser"] < 220e6
    assert 1e6 < counts["prompt"] < 3e6
    assert counts["total"] == counts["segmentor"] + counts["denoiser"] + counts["prompt"]


def test_tiny_bjd_learns_one_synthetic_task_and_samples_valid_masks():
    torch.manual_seed(0)
    cfg = preset("tiny")
    card = get_card("fundus-a")
    data = synthetic_task(card, image_size=32, n_train=32, n_val=4, n_test=4, seed=0).train
    emb = encode_tasks([card], HashEncoder(dim=32))
    model = C2GRModel(cfg, c_max=2, emb=emb)
    sched = make_scheduler(cfg.diffusion, "ddpm")
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(40):
        idx = torch.randint(0, len(data), (16,), generator=g)
        batch = PairBatch(torch.from_numpy(data.images[idx.numpy()]), torch.from_numpy(data.masks[idx.numpy()]).long(),
                          torch.zeros(16, dtype=torch.long))
        out = coupled_loss(model, emb, 0, batch, None, sched, torch.tensor([2]), train_segmentor=False)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    # Three unit-variance noise targets: an untrained (zero-output) denoiser scores ~3 (2 for the
    # conditional terms' zero halves). Training must bring it clearly down.
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:3]) / 3
    _, z = model.prompts(emb, 0)
    images, labels = sample_pairs(model.denoiser, z[0], 6, 32, model.codec, sampler="ddim", steps=10,
                                  cfg=cfg.diffusion, generator=torch.Generator().manual_seed(1))
    assert images.shape == (6, 3, 32, 32) and images.abs().max() <= 1
    assert labels.shape == (6, 32, 32) and labels.dtype == torch.long
    assert int(labels.min()) >= 0 and int(labels.max()) <= 2


def test_prompt_identity_options_reach_the_coupled_model():
    cfg = preset("tiny")
    cfg.prompt.relation_norm, cfg.prompt.residual = "row", True
    cards = [get_card("fundus-a"), get_card("mms-a")]
    model = C2GRModel(cfg, c_max=3, emb=encode_tasks(cards, HashEncoder(dim=32)))
    assert (model.prompt.relation_norm, model.prompt.residual) == ("row", True)
