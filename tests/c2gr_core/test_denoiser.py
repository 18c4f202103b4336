"""The joint denoiser: shapes, input checks, prompt tokens, and the paper-scale network (sec. 4.2)."""
import time

import pytest
import torch

from c2gr_core.config import preset
from c2gr_core.models.denoiser import Denoiser, count_parameters

M = 4  # C_max + 1 for the paper stream (C_max = 3)


def _tiny(**kw):
    cfg = preset("tiny")
    return Denoiser(cfg.denoiser, mask_channels=M, prompt_dim=cfg.prompt.node_dim, **kw), cfg


def test_tiny_forward_shapes():
    torch.manual_seed(0)
    net, cfg = _tiny()
    xy = torch.randn(2, 3 + M, 32, 32)
    out = net(xy, torch.tensor([0, 999]), torch.randn(2, cfg.prompt.node_dim))
    assert out.shape == xy.shape and out.dtype == torch.float32
    ctx = net.context(torch.randn(2, cfg.prompt.node_dim))
    assert ctx.shape == (2, cfg.prompt.n_tokens, cfg.denoiser.cross_attention_dim)


def test_cpu_preset_forward_shapes():
    cfg = preset("cpu")
    net = Denoiser(cfg.denoiser, mask_channels=M, prompt_dim=cfg.prompt.node_dim)
    s = cfg.data.image_size
    out = net(torch.randn(1, 3 + M, s, s), torch.tensor([5]), torch.randn(1, cfg.prompt.node_dim))
    assert out.shape == (1, 3 + M, s, s)


@pytest.mark.parametrize("xy_shape, prompt_shape, match", [
    ((2, 3 + M + 1, 32, 32), (2, 32), "channels"),     # mask code with the wrong channel count
    ((2, 3 + M, 32, 32), (2, 31), "prompt"),           # prompt of the wrong dimension
    ((2, 3 + M, 30, 30), (2, 32), "divisible"),        # 30 is not divisible by 2**(levels-1) = 4
    ((2, 3 + M, 32, 32), (3, 32), "batch"),
])
def test_bad_inputs_raise_clear_errors(xy_shape, prompt_shape, match):
    net, _ = _tiny()
    with pytest.raises(ValueError, match=match):
        net(torch.randn(*xy_shape), torch.zeros(xy_shape[0], dtype=torch.long), torch.randn(*prompt_shape))


def test_bad_config_raises():
    cfg = preset("tiny").denoiser
    cfg.norm_groups = 5
    with pytest.raises(ValueError, match="norm_groups"):
        Denoiser(cfg, mask_channels=M, prompt_dim=32)


@pytest.mark.slow
def test_paper_preset_instantiates_and_runs_one_forward_on_cpu():
    cfg = preset("paper")
    net = Denoiser(cfg.denoiser, mask_channels=M, prompt_dim=cfg.prompt.node_dim).eval()
    n = count_parameters(net)
    adapter = cfg.prompt.node_dim * cfg.prompt.n_tokens * 768 + cfg.prompt.n_tokens * 768
    print(f"paper denoiser: {n:,} parameters (prompt adapter {adapter:,})")
    assert count_parameters(net.prompt_adapter) == adapter
    # Sanity range from the architecture: the 2 x 512-channel levels with res blocks and attention
    # dominate (a 3x3 conv 512->512 alone is 2.36 M; each level has >= 2 res blocks of 2 convs,
    # plus up blocks with 3). Measured 183.9 M with MONAI 1.6.1.
    assert 150e6 < n < 220e6
    s = cfg.data.image_size
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = net(torch.randn(1, 3 + M, s, s), torch.tensor([999]), torch.randn(1, cfg.prompt.node_dim))
    print(f"paper denoiser forward, batch 1, {s}x{s}, CPU: {time.perf_counter() - t0:.2f} s")
    assert out.shape == (1, 3 + M, s, s) and torch.isfinite(out).all()


def _randomised(net):
    # MONAI zero-initialises the output convolution (and so every prompt gives 0 at init).
    with torch.no_grad():
        for prm in net.parameters():
            prm.normal_(0, 0.1)
    return net


def test_prompt_in_timestep_reaches_blocks_without_attention():
    """With the cross-attention context cut off (a zero prompt adapter) the prompt has no path into
    the network but the timestep embedding: two prompts give one output unless prompt_in_timestep
    adds it there."""
    cfg = preset("tiny").denoiser
    xy, k = torch.randn(2, 3 + M, 16, 16), torch.tensor([10, 500])
    p1, p2 = torch.randn(2, 8), torch.randn(2, 8)
    for on in (False, True):
        cfg.prompt_in_timestep = on
        torch.manual_seed(0)
        net = _randomised(Denoiser(cfg, mask_channels=M, prompt_dim=8))
        with torch.no_grad():
            net.prompt_adapter.weight.zero_()
            differ = not torch.allclose(net(xy, k, p1), net(xy, k, p2))
        assert differ == on


def test_prompt_in_timestep_adds_a_linear_map_of_the_prompt_to_the_timestep_embedding():
    """Independent check of what the option adds: the MONAI UNet without it, its timestep embedding
    shifted by W p + b through a hook, equals the network with it."""
    cfg = preset("tiny").denoiser
    cfg.prompt_in_timestep = True
    torch.manual_seed(0)
    net = _randomised(Denoiser(cfg, mask_channels=M, prompt_dim=8))
    plain_cfg = preset("tiny").denoiser
    plain = Denoiser(plain_cfg, mask_channels=M, prompt_dim=8)
    missing = plain.load_state_dict(net.state_dict(), strict=False)
    assert set(missing.unexpected_keys) == {"unet.class_embedding.weight", "unet.class_embedding.bias"}
    assert not missing.missing_keys
    xy, k, p = torch.randn(3, 3 + M, 16, 16), torch.tensor([1, 400, 999]), torch.randn(3, 8)
    W, b = net.unet.class_embedding.weight, net.unet.class_embedding.bias
    shift = torch.stack([W @ p[i] + b for i in range(3)])
    hook = plain.unet.time_embed.register_forward_hook(lambda mod, inp, out: out + shift)
    with torch.no_grad():
        expected = plain(xy, k, p)
        hook.remove()
        unshifted = plain(xy, k, p)
        got = net(xy, k, p)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, unshifted, atol=1e-3)
