import math
import warnings

import pytest
import torch

from c2gr_core.prompting.prompts import SUBSETS, attribute_phrases, encode_tasks, sites_needed, task_prompt
from c2gr_core.prompting.text_encoders import HashEncoder
from data_catalog.schema import card_from_dict


def card(name, modality, anatomy, objective, classes, site=None):
    raw = {"name": name, "modality": modality, "anatomy": anatomy, "objective": objective, "classes": classes}
    if site is not None:
        raw["site"] = site
    return card_from_dict(raw, origin=f"<{name}>")


DISC_CUP = "optic disc and cup segmentation"
CARDS = [
    card("fundus-b", "fundus photography", "eye", DISC_CUP, ["optic disc", "optic cup"], site="Nidek AFC-210"),
    card("fundus-c", "fundus photography", "eye", DISC_CUP, ["optic disc", "optic cup"], site="Canon CR-2"),
    card("busi", "ultrasound", "breast", "breast tumour segmentation", ["breast tumour"], site="Baheya Hospital"),
    card("kits", "CT", "kidney", "kidney and kidney tumour segmentation", ["kidney", "kidney tumour"]),
    card("lits", "ct", "liver", "liver and liver tumour segmentation", ["liver", "liver tumour"]),
]


def test_subsets_in_paper_order():
    assert SUBSETS == (("I",), ("A",), ("SO",), ("I", "A"), ("I", "SO"), ("A", "SO"))


def test_sites_only_for_shared_modalities():
    # CT / ct share a modality (case-insensitive); ultrasound is alone.
    assert sites_needed(CARDS) == {"fundus-b", "fundus-c", "kits", "lits"}
    assert sites_needed(CARDS[2:3]) == set()


def test_prompt_texts():
    need = sites_needed(CARDS)
    texts = {c.name: task_prompt(c, c.name in need) for c in CARDS}
    assert texts == {
        "fundus-b": "A fundus photography image of eye for optic disc and cup segmentation, acquired with Nidek AFC-210",
        "fundus-c": "A fundus photography image of eye for optic disc and cup segmentation, acquired with Canon CR-2",
        "busi": "A ultrasound image of breast for breast tumour segmentation",   # has a site, modality not shared
        "kits": "A CT image of kidney for kidney and kidney tumour segmentation",  # shared, but no site on the card
        "lits": "A ct image of liver for liver and liver tumour segmentation",
    }
    at = card("fundus-a", "fundus photography", "eye", DISC_CUP, ["optic disc"], site="at Aravind Eye Hospital")
    assert task_prompt(at, True).endswith(", acquired at Aravind Eye Hospital")


def test_attribute_phrases_fold_site_into_imaging():
    assert attribute_phrases(CARDS[1], with_site=True) == {
        "I": "fundus photography, acquired with Canon CR-2", "A": "eye", "SO": DISC_CUP}
    assert attribute_phrases(CARDS[1])["I"] == "fundus photography"


def test_encode_tasks_shapes_and_components():
    enc = HashEncoder(dim=32)
    emb = encode_tasks(CARDS, enc)
    assert emb.names == [c.name for c in CARDS] and len(emb) == 5
    assert emb.e.shape == (5, 32) and emb.e.dtype == torch.float32
    assert set(emb.components) == set(SUBSETS)
    for s in SUBSETS:
        assert emb.components[s].shape == (5, 32 * len(s))
    # Independently: the full prompt row and a concatenated component equal separate encodings.
    assert torch.allclose(emb.e[3], enc.encode([emb.texts[3]])[0])
    ph = attribute_phrases(CARDS[0], with_site=True)
    want = torch.cat([enc.encode([ph["I"]])[0], enc.encode([ph["SO"]])[0]])
    assert torch.allclose(emb.components[("I", "SO")][0], want)


def test_identical_phrases_identical_components_cosine_one():
    emb = encode_tasks(CARDS, HashEncoder(dim=32))
    for s in (("A",), ("SO",), ("A", "SO")):      # fundus-b and fundus-c: same anatomy and objective
        a, b = emb.components[s][0], emb.components[s][1]
        assert torch.equal(a, b)
        dot = sum(float(x) * float(y) for x, y in zip(a, b))
        cos = dot / math.sqrt(sum(float(x) ** 2 for x in a) * sum(float(y) ** 2 for y in b))
        assert cos == pytest.approx(1.0, abs=1e-6)
    assert not torch.equal(emb.components[("I",)][0], emb.components[("I",)][1])  # sites differ


def test_site_tasks_override_and_select():
    # The pool seen in round 1 (fundus-b only) still uses the stream's site decision.
    emb = encode_tasks(CARDS[:1], HashEncoder(), site_tasks=sites_needed(CARDS))
    assert emb.texts[0].endswith("acquired with Nidek AFC-210")
    full = encode_tasks(CARDS, HashEncoder())
    sub = full.select(["lits", "fundus-b"])
    assert sub.names == ["lits", "fundus-b"] and torch.equal(sub.e[1], full.e[0])
    assert torch.equal(sub.components[("I", "A")][0], full.components[("I", "A")][4])
    with pytest.raises(KeyError, match="drive"):
        full.select(["drive"])


def test_bad_input():
    with pytest.raises(ValueError, match="duplicate task names"):
        encode_tasks([CARDS[0], CARDS[0]], HashEncoder())
    with pytest.raises(ValueError, match="no task cards"):
        encode_tasks([], HashEncoder())


class CountingEncoder(HashEncoder):
    def __init__(self):
        super().__init__(dim=16)
        self.encoded: list[str] = []

    def _encode(self, texts):
        self.encoded += texts
        return super()._encode(texts)


def test_cache_avoids_reencoding(tmp_path):
    enc = CountingEncoder()
    first = encode_tasks(CARDS[:3], enc, cache_dir=tmp_path)
    n_unique = len(set(first.texts) | {p[a] for p in first.phrases for a in ("I", "A", "SO")})
    assert len(enc.encoded) == n_unique == len(list(tmp_path.glob("*.pt")))   # each text once
    enc.encoded.clear()
    again = encode_tasks(CARDS[:3], enc, cache_dir=tmp_path)
    assert enc.encoded == []
    assert torch.equal(again.e, first.e)
    for s in SUBSETS:
        assert torch.equal(again.components[s], first.components[s])
    # A new task encodes only its own new texts (prompt and three phrases).
    encode_tasks(CARDS[:3] + CARDS[3:4], enc, cache_dir=tmp_path, site_tasks=sites_needed(CARDS[:3]))
    assert sorted(enc.encoded) == sorted([task_prompt(CARDS[3]), "CT", "kidney",
                                          "kidney and kidney tumour segmentation"])
    # A different encoder name is a different cache key.
    other = CountingEncoder()
    other.name = "another encoder"
    encode_tasks(CARDS[:1], other, cache_dir=tmp_path)
    assert len(other.encoded) == 4


def test_corrupt_cache_entry_is_reencoded(tmp_path):
    enc = CountingEncoder()
    encode_tasks(CARDS[:1], enc, cache_dir=tmp_path)
    victim = sorted(tmp_path.glob("*.pt"))[0]
    victim.write_bytes(b"not a torch file")
    enc.encoded.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encode_tasks(CARDS[:1], enc, cache_dir=tmp_path)
    assert len(enc.encoded) == 1
    assert any(str(victim) in str(w.message) for w in caught)
    assert torch.load(victim, weights_only=True)["embedding"].shape == (16,)
