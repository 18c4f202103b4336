"""The prompted segmentor: eq. (6) against a hand loop, prompt sensitivity, one attention per level."""
from __future__ import annotations

import math

import pytest
import torch

from c2gr_core.config import SegmentorConfig, preset
from c2gr_core.models.segmentor import PromptCrossAttention, PromptedUNet


def _eq6_by_hand(h, ctx, Wq, Wk, Wv, Wo, bo, head_dim):
    """tau = h + W_O concat_heads(softmax(Q h (K z)^T / sqrt(d)) V z) + b_O, one pixel at a time."""
    B, C, H, W = h.shape
    heads = Wq.shape[0] // head_dim
    tau = h.clone()
    for b in range(B):
        k = [Wk @ ctx[b, n] for n in range(ctx.shape[1])]
        v = [Wv @ ctx[b, n] for n in range(ctx.shape[1])]
        for i in range(H):
            for j in range(W):
                q = Wq @ h[b, :, i, j]
                out = []
                for hd in range(heads):
                    s = slice(hd * head_dim, (hd + 1) * head_dim)
                    scores = [float(q[s] @ kn[s]) / math.sqrt(head_dim) for kn in k]
                    m = max(scores)
                    e = [math.exp(x - m) for x in scores]
                    out.append(sum(ei / sum(e) * vn[s] for ei, vn in zip(e, v)))
                tau[b, :, i, j] += Wo @ torch.cat(out) + bo
    return tau


@pytest.mark.parametrize("fast", [True, False])
def test_eq6_single_head_is_exactly_the_paper_formula(fast):
    torch.manual_seed(0)
    C, D, N = 4, 3, 3
    att = PromptCrossAttention(C, D, head_channels=C, fast_attention=fast).double()
    Q, K, V = torch.randn(C, C).double(), torch.randn(C, D).double(), torch.randn(C, D).double()
    with torch.no_grad():
        att.attn.to_q.weight.copy_(Q)
        att.attn.to_k.weight.copy_(K)
        att.attn.to_v.weight.copy_(V)
        att.attn.out_proj.weight.copy_(torch.eye(C))   # no output projection: eq. (6) verbatim
        att.attn.out_proj.bias.zero_()
    h, z = torch.randn(2, C, 3, 2).double(), torch.randn(2, N, D).double()
    want = _eq6_by_hand(h, z, Q, K, V, torch.eye(C).double(), torch.zeros(C).double(), C)
    torch.testing.assert_close(att(h, z), want)


def test_eq6_multi_head_matches_hand_loop():
    torch.manual_seed(1)
    C, D, N, d = 6, 5, 4, 2                                # 3 heads of d_l = 2
    att = PromptCrossAttention(C, D, head_channels=d).double()
    assert att.num_heads == 3
    a = att.attn
    h, z = torch.randn(2, C, 2, 3).double(), torch.randn(2, N, D).double()
    with torch.no_grad():
        want = _eq6_by_hand(h, z, a.to_q.weight, a.to_k.weight, a.to_v.weight, a.out_proj.weight,
                            a.out_proj.bias, d)
        torch.testing.assert_close(att(h, z), want)


def test_single_token_attention_degenerates_to_a_constant_shift():
    # Why the prompt adapter makes n_tokens > 1: over one key the softmax is 1 at every pixel.
    torch.manual_seed(2)
    att = PromptCrossAttention(4, 3, head_channels=2)
    h = torch.randn(1, 4, 3, 3)
    delta = att(h, torch.randn(1, 1, 3)) - h
    torch.testing.assert_close(delta, delta[:, :, :1, :1].expand_as(delta))
    delta4 = att(h, torch.randn(1, 4, 3)) - h
    assert not torch.allclose(delta4, delta4[:, :, :1, :1].expand_as(delta4))


def _tiny():
    cfg = preset("tiny")
    return cfg, PromptedUNet(cfg.segmentor, 3, 4, cfg.prompt.node_dim, cfg.prompt.n_tokens).eval()


def test_output_depends_on_the_prompt_and_only_on_its_own():
    torch.manual_seed(3)
    cfg, net = _tiny()
    x = torch.randn(2, 3, 32, 32)
    p1, p2, p3 = (torch.randn(1, cfg.prompt.node_dim) for _ in range(3))
    with torch.no_grad():
        a = net(x, torch.cat([p1, p2]))
        a_again = net(x, torch.cat([p1, p2]))
        b = net(x, torch.cat([p1, p3]))
        fa, fb = net.features(x, torch.cat([p1, p2])), net.features(x, torch.cat([p1, p3]))
    assert torch.equal(a, a_again)
    torch.testing.assert_close(a[0], b[0])                 # sample 0 kept its prompt
    assert (a[1] - b[1]).abs().max() > 1e-4                # sample 1's prompt changed
    torch.testing.assert_close(fa[0], fb[0])
    assert (fa[1] - fb[1]).abs().max() > 1e-5


def test_shapes_and_errors_tiny():
    cfg, net = _tiny()
    P = cfg.prompt.node_dim
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32), torch.randn(2, P)).shape == (2, 4, 32, 32)
        assert net(torch.randn(1, 3, 8, 12), torch.randn(1, P)).shape == (1, 4, 8, 12)  # any H, W % 4 == 0
        assert net.features(torch.randn(3, 3, 32, 32), torch.randn(3, P)).shape == (3, cfg.segmentor.channels[-1])
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 3, 30, 32), torch.randn(1, P))
    with pytest.raises(ValueError, match="prompt must have shape"):
        net(torch.randn(1, 3, 32, 32), torch.randn(1, P + 1))
    with pytest.raises(ValueError, match="batch sizes differ"):
        net(torch.randn(2, 3, 32, 32), torch.randn(1, P))
    with pytest.raises(ValueError, match="num_head_channels"):
        PromptedUNet(SegmentorConfig(channels=(8, 12), num_head_channels=8, norm_groups=4))


@pytest.mark.parametrize("name", ["tiny", "cpu"])
def test_every_level_has_one_cross_attention(name):
    cfg = preset(name)
    ch = cfg.segmentor.channels
    L = len(ch)
    net = PromptedUNet(cfg.segmentor, 3, 4, cfg.prompt.node_dim, cfg.prompt.n_tokens).eval()
    atts = [m for m in net.modules() if isinstance(m, PromptCrossAttention)]
    assert len(atts) == 2 * L - 1 == net.n_levels     # L-1 encoder + bottleneck + L-1 decoder
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[1], i[0].shape[-1]))) for m in atts]
    S = 2 ** L
    with torch.no_grad():
        net(torch.randn(1, 3, S, S), torch.randn(1, cfg.prompt.node_dim))
    for hk in hooks:
        hk.remove()
    want = [(ch[i], S // 2 ** i) for i in range(L)] + [(ch[i], S // 2 ** i) for i in reversed(range(L - 1))]
    assert seen == want                                    # (channels, width) of every level, in order


def test_paper_preset_size_and_forward():
    cfg = preset("paper")
    ch, D, P = cfg.segmentor.channels, cfg.segmentor.cross_attention_dim, cfg.prompt.node_dim
    assert ch == (32, 64, 128, 256, 512, 512, 512) and D == 768
    net = PromptedUNet(cfg.segmentor, 3, 4, P, cfg.prompt.n_tokens).eval()
    n = sum(p.numel() for p in net.parameters())
    # Weights a residual UNet of these widths must have: per unit two 3x3 convs plus the
    # shortcut (3x3 when strided, 1x1 when widths change); deconv 2x2; Q, O (C x C) and K, V (C x D)
    # per level; the prompt adapter. Biases/norms/PReLU add well under 1 %.
    est = 3 * 32 * 9 + 32 * 32 * 9 + 3 * 32                                       # level 0 (+1x1 shortcut)
    est += sum(2 * a * b * 9 + b * b * 9 for a, b in zip(ch[:-1], ch[1:]))         # strided levels
    est += sum(b * a * 4 + 2 * a * a * 9 + a * a * 9 + 2 * a * a for a, b in zip(ch[:-1], ch[1:]))  # decoder
    est += sum(2 * c * c + 2 * c * D for c in list(ch) + list(ch[:-1]))             # 13 cross-attentions
    est += P * cfg.prompt.n_tokens * D + 4 * 32
    print(f"\nsegmentor parameters (paper preset): {n:,} (weight estimate {est:,})")
    assert est <= n <= 1.01 * est
    with torch.no_grad():
        y = net(torch.randn(1, 3, 256, 256), torch.randn(1, P))
    assert y.shape == (1, 4, 256, 256) and torch.isfinite(y).all()
