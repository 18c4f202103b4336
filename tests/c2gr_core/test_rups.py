import math

import pytest
import torch

from c2gr_core.config import PromptConfig, preset
from c2gr_core.prompting.prompts import SUBSETS, encode_tasks, subset_key
from c2gr_core.prompting.rups import PlainPrompt, PromptGraph, build_prompt_module
from c2gr_core.prompting.text_encoders import HashEncoder
from data_catalog.schema import card_from_dict

E, NODE, Q = 12, 8, 6


def make_inputs(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    per_attr = {a: torch.randn(T, E, generator=g) for a in ("I", "A", "SO")}
    if T > 1:
        per_attr["A"][1] = per_attr["A"][0]       # tasks 0 and 1: identical anatomy phrase
    comps = {s: torch.cat([per_attr[a] for a in s], dim=1) for s in SUBSETS}
    return torch.randn(T, E, generator=g), comps


def make_graph(eta_init=0.3, seed=0, **options):
    torch.manual_seed(seed)
    return PromptGraph(E, {s: E * len(s) for s in SUBSETS}, NODE, Q, eta_init=eta_init, **options)


# ---- independent, obvious computations (python loops over scalars)

def hand_cos(u, v):
    dot = sum(float(x) * float(y) for x, y in zip(u, v))
    return dot / math.sqrt(sum(float(x) ** 2 for x in u) * sum(float(y) ** 2 for y in v))


def hand_attention(graph, n, comp, s, eta, row=False):
    """Eq. 4 with a double loop over (i1, i2); V_S scores a pair as (V_S n_i1) . n_i2 / sqrt(d).
    row=True: each cosine divided by the sum of |cosine| over its row (relation_norm="row")."""
    W = graph.V[subset_key(s)].weight
    T, d = n.shape

    def score(i1, i2):
        return sum(float(W[r] @ n[i1]) * float(n[i2, r]) for r in range(d)) / math.sqrt(d)

    a = torch.zeros(T, T)
    for i1 in range(T):
        ex = [math.exp(score(i1, i)) for i in range(T)]
        mass = sum(abs(hand_cos(comp[i1], comp[i])) for i in range(T)) if row else 1.0
        for i2 in range(T):
            a[i1, i2] = eta * ex[i2] / sum(ex) + (1 - eta) * hand_cos(comp[i1], comp[i2]) / mass
    return a


def hand_zeta(graph, e, comps, row=False, residual=False):
    eta = float(graph.eta)
    n = e @ graph.W_E.weight.T
    T = n.shape[0]
    z, w = {}, {}
    for s in SUBSETS:
        a = hand_attention(graph, n, comps[s], s, eta, row=row)
        zs = torch.zeros(T, NODE)
        for i in range(T):
            acc = sum(a[i, j] * n[j] for j in range(T))
            zs[i] = torch.where(acc > 0, acc, 0.01 * acc)              # LeakyReLU
        z[s] = zs
        total = 0.0
        for i in range(T):
            h = graph.W_q.weight @ zs[i] + graph.W_q.bias
            total += sum(float(graph.q[k]) * math.tanh(float(h[k])) for k in range(Q))
        w[s] = total / T
    denom = sum(math.exp(w[s]) for s in SUBSETS)
    beta = {s: math.exp(w[s]) / denom for s in SUBSETS}
    zeta = sum(beta[s] * z[s] for s in SUBSETS)
    return (n + zeta if residual else zeta), beta


# ---- eq. 4

@torch.no_grad()
def test_eq4_matches_double_loop():
    g = make_graph(eta_init=0.3)
    e, comps = make_inputs(5)
    _, d = g((e, comps), return_details=True)
    n = e @ g.W_E.weight.T
    assert float(d["eta"]) == pytest.approx(0.3, abs=1e-6)
    for s in SUBSETS:
        assert torch.allclose(d["attention"][s], hand_attention(g, n, comps[s], s, 0.3), atol=1e-5)


@torch.no_grad()
def test_eq4_eta_one_rows_sum_to_one_eta_zero_is_cosine():
    g = make_graph()
    e, comps = make_inputs(4)
    n = g.nodes(e)
    for s in SUBSETS:
        a1 = g.attention(n, comps[s], s, eta=1.0)
        assert torch.allclose(a1.sum(dim=1), torch.ones(4), atol=1e-6)
        a0 = g.attention(n, comps[s], s, eta=0.0)
        hand = torch.tensor([[hand_cos(comps[s][i], comps[s][j]) for j in range(4)] for i in range(4)])
        assert torch.allclose(a0, hand, atol=1e-5)


@torch.no_grad()
def test_identical_phrases_give_cosine_one():
    g = make_graph()
    e, comps = make_inputs(4)
    _, d = g((e, comps), return_details=True)
    assert float(d["cosine"][("A",)][0, 1]) == pytest.approx(1.0, abs=1e-6)
    assert float(d["cosine"][("I",)][0, 1]) < 0.99
    # Through the real prompt pipeline: two fundus sites share anatomy and objective.
    cards = [card_from_dict({"name": f"fundus-{x}", "modality": "fundus photography", "anatomy": "eye",
                             "objective": "optic disc and cup segmentation", "classes": ["optic disc"],
                             "site": site}) for x, site in (("b", "Nidek AFC-210"), ("c", "Canon CR-2"))]
    emb = encode_tasks(cards, HashEncoder(dim=E))
    diag = build_prompt_module(PromptConfig(node_dim=NODE, q_dim=Q), emb).diagnostics(emb)
    for s in (("A",), ("SO",), ("A", "SO")):
        assert diag["cosine"][s][0, 1] == pytest.approx(1.0, abs=1e-6)
    assert diag["names"] == ["fundus-b", "fundus-c"]


# ---- eq. 5

@torch.no_grad()
def test_eq5_weights_and_zeta_match_hand_loop():
    g = make_graph(eta_init=0.6, seed=1)
    e, comps = make_inputs(4, seed=2)
    zeta, d = g((e, comps), return_details=True)
    want, beta = hand_zeta(g, e, comps)
    assert sum(float(v) for v in d["subgraph_weights"].values()) == pytest.approx(1.0, abs=1e-6)
    for s in SUBSETS:
        assert float(d["subgraph_weights"][s]) == pytest.approx(beta[s], abs=1e-5)
    assert zeta.shape == (4, NODE)
    assert torch.allclose(zeta, want, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("relation_norm,residual", [("row", False), ("none", True), ("row", True)])
def test_identity_options_match_hand_loop(relation_norm, residual):
    g = make_graph(eta_init=0.4, seed=3, relation_norm=relation_norm, residual=residual)
    e, comps = make_inputs(5, seed=4)
    zeta, d = g((e, comps), return_details=True)
    n = e @ g.W_E.weight.T
    for s in SUBSETS:
        want = hand_attention(g, n, comps[s], s, 0.4, row=relation_norm == "row")
        assert torch.allclose(d["attention"][s], want, atol=1e-5)
    assert torch.allclose(zeta, hand_zeta(g, e, comps, row=relation_norm == "row", residual=residual)[0], atol=1e-5)


@torch.no_grad()
def test_row_norm_keeps_message_scale_as_the_pool_grows():
    """Eq. 4 read literally sums raw cosines over the pool: with t copies of one task, z grows like t.
    Row-normalised, the copies share one unit of mass and the message stays the task's own node."""
    e, comps = make_inputs(1, seed=5)
    for relation_norm, grows in (("none", True), ("row", False)):
        g = make_graph(relation_norm=relation_norm)
        z1 = g((e, comps))
        z6 = g((e.repeat(6, 1), {s: c.repeat(6, 1) for s, c in comps.items()}))
        ratio = float(z6[0].norm() / z1[0].norm())
        assert (ratio > 3.0) if grows else ratio == pytest.approx(1.0, abs=1e-5)


def test_identity_options_are_validated_and_reach_the_models():
    with pytest.raises(ValueError, match="prompt.relation_norm"):
        make_graph(relation_norm="rows")
    with pytest.raises(ValueError, match="prompt.residual"):
        make_graph(residual="yes")
    cfg = PromptConfig(node_dim=NODE, q_dim=Q, relation_norm="row", residual=True)
    g = build_prompt_module(cfg, make_inputs(3))
    assert (g.relation_norm, g.residual) == ("row", True)


def test_gradients_reach_every_learned_part():
    g = make_graph()
    e, comps = make_inputs(5)
    zeta = g((e, comps))
    (zeta * torch.randn_like(zeta)).sum().backward()

    def nonzero(p):
        return p.grad is not None and p.grad.abs().sum() > 0

    assert nonzero(g.W_E.weight) and nonzero(g.eta_raw) and nonzero(g.q)
    assert nonzero(g.W_q.weight) and nonzero(g.W_q.bias)
    for s in SUBSETS:
        assert nonzero(g.V[subset_key(s)].weight)


def test_eta_stays_in_unit_interval():
    g = make_graph()
    with torch.no_grad():
        g.eta_raw.fill_(50.0)
        assert 0.0 <= float(g.eta) <= 1.0
        g.eta_raw.fill_(-50.0)
        assert 0.0 <= float(g.eta) <= 1.0


def test_parameters_independent_of_pool_size():
    g = make_graph()
    count = sum(p.numel() for p in g.parameters())
    for T in (1, 3, 9):
        e, comps = make_inputs(T)
        assert g((e, comps)).shape == (T, NODE)
    assert sum(p.numel() for p in g.parameters()) == count
    cfg = PromptConfig(node_dim=NODE, q_dim=Q)
    small, big = (build_prompt_module(cfg, make_inputs(T)) for T in (2, 11))
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in big.parameters()) == count


@torch.no_grad()
def test_single_task_pool():
    g = make_graph()
    e, comps = make_inputs(1)
    _, d = g((e, comps), return_details=True)
    for s in SUBSETS:   # softmax over one node is 1 and cos(x, x) = 1
        assert float(d["attention"][s][0, 0]) == pytest.approx(1.0, abs=1e-6)


def test_bad_inputs():
    g = make_graph()
    e, comps = make_inputs(3)
    with pytest.raises(ValueError, match=r"\(T >= 1, 12\)"):
        g((e[:, :5], comps))
    with pytest.raises(ValueError, match="missing"):
        g((e, {s: c for s, c in comps.items() if s != ("I", "A")}))
    with pytest.raises(ValueError, match="component I\\+SO"):
        g((e, {**comps, ("I", "SO"): comps[("I", "SO")][:2]}))
    with pytest.raises(ValueError, match="eta_init"):
        PromptGraph(E, {("I",): E}, NODE, Q, eta_init=1.0)
    with pytest.raises(ValueError, match="unknown attribute subset"):
        PromptGraph(E, {("I", "A", "SO"): 3 * E}, NODE, Q)
    with pytest.raises(TypeError, match="TaskEmbeddings"):
        g(e)


# ---- the "w/o RUPS" ablation and the factory

@torch.no_grad()
def test_plain_prompt_is_per_task_projection():
    torch.manual_seed(0)
    p = PlainPrompt(E, NODE)
    e, comps = make_inputs(4)
    zeta = p((e, comps))
    assert torch.allclose(zeta, e @ p.proj.weight.T + p.proj.bias, atol=1e-6)
    e2 = e.clone()
    e2[3] += 1.0                                  # another task changes: no graph, row 0 unchanged
    assert torch.equal(p((e2, comps))[0], zeta[0])


def test_build_prompt_module_and_paper_preset():
    emb = make_inputs(3)
    assert isinstance(build_prompt_module(PromptConfig(rups=False, node_dim=NODE), emb), PlainPrompt)
    cfg = preset("paper").prompt
    g = build_prompt_module(cfg, (torch.randn(3, 512), {s: torch.randn(3, 512 * len(s)) for s in SUBSETS}))
    assert isinstance(g, PromptGraph) and g((torch.randn(3, 512),
                                             {s: torch.randn(3, 512 * len(s)) for s in SUBSETS})).shape == (3, 512)
    # W_E 512x512 (no bias), six V_S of 2*512+1, W_q 512x256 + b_q, q, eta.
    assert sum(p.numel() for p in g.parameters()) == 512 * 512 + 6 * 512 * 512 + 512 * 256 + 256 + 256 + 1  # W_E, V_S (bilinear), W_q+b_q, q, eta


def test_learned_attention_rows_differ_between_tasks():
    # The literal "linear layer on the concatenated pair" would give identical rows (rups.py note).
    g = make_graph()
    e, comps = make_inputs(5)
    s = SUBSETS[0]
    a = g.attention(g.nodes(e), comps[s], s, eta=1.0)
    assert not torch.allclose(a[0], a[1], atol=1e-4)
