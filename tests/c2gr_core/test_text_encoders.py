import json
import os

import pytest
import torch
import torch.nn.functional as F

from c2gr_core.config import PromptConfig
from c2gr_core.prompting.text_encoders import HashEncoder, MiniLMEncoder, OpenCLIPEncoder, get_text_encoder


# ------------------------------------------------------------------ MiniLM (real model, offline)

@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder()      # one load per test module


def cos(a, b):
    return float(F.cosine_similarity(a[None], b[None])[0])


def test_minilm_is_pretrained_384d(minilm):
    e = minilm.encode([
        "A fundus photography image of eye for optic disc and cup segmentation",
        "A retinal fundus photograph for segmenting the optic disc and optic cup",
        "A CT image of abdomen for liver tumour segmentation",
    ])
    assert e.shape == (3, 384) and e.dtype == torch.float32 and not e.requires_grad
    # A random network would not rank the paraphrase far above the unrelated prompt.
    assert cos(e[0], e[1]) > cos(e[0], e[2]) + 0.2
    assert minilm.dim == 384 and "MiniLM" in minilm.name


def test_minilm_frozen_and_deterministic(minilm):
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert not minilm.model.training
    a = minilm.encode(["A MR image of heart for left ventricle segmentation"])
    assert torch.allclose(a, minilm.encode(["A MR image of heart for left ventricle segmentation"]), atol=1e-6)


def test_minilm_missing_weights_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MiniLMEncoder(model_dir=tmp_path / "nowhere")


def test_minilm_loads_with_hub_offline(tmp_path, monkeypatch):
    import sentence_transformers
    seen = {}

    class FakeST:
        def __init__(self, path, device=None, local_files_only=False):
            seen.update(env=os.environ.get("HF_HUB_OFFLINE"), local=local_files_only, path=path)

        def eval(self):
            return self

        def requires_grad_(self, flag):
            return self

        def get_embedding_dimension(self):
            return 384

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeST)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    enc = MiniLMEncoder(model_dir=tmp_path)
    assert seen == {"env": "1", "local": True, "path": str(tmp_path)} and enc.dim == 384
    assert "HF_HUB_OFFLINE" not in os.environ           # restored after loading


# ------------------------------------------------------------------ open_clip (local checkpoint only)

def test_open_clip_without_checkpoint_fails_clearly():
    with pytest.raises(ValueError, match="no weights are downloaded"):
        OpenCLIPEncoder("ViT-B-32", None)
    with pytest.raises(ValueError, match="open_clip_checkpoint"):
        get_text_encoder(PromptConfig(encoder="open_clip"))


def test_open_clip_missing_file_names_path(tmp_path):
    missing = tmp_path / "clip-vit-b-32.pt"
    with pytest.raises(FileNotFoundError) as err:
        OpenCLIPEncoder("ViT-B-32", missing)
    assert str(missing) in str(err.value) and "no weights are downloaded" in str(err.value)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip architecture registered from a JSON config, and a checkpoint of it."""
    import open_clip
    d = tmp_path_factory.mktemp("clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / "c2gr-test-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / "c2gr-test-tiny-clip.json")
    cfg["text_cfg"]["width"] = 48          # same family, different shapes
    (d / "c2gr-test-tiny-clip-wide.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / "c2gr-test-tiny-clip-wide.json")
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("c2gr-test-tiny-clip", pretrained=None)
    torch.save(model.state_dict(), d / "tiny.pt")
    return model.eval(), d / "tiny.pt"


def test_open_clip_loads_local_checkpoint(tiny_clip):
    import open_clip
    model, path = tiny_clip
    enc = OpenCLIPEncoder("c2gr-test-tiny-clip", path)
    texts = ["A CT image of liver for liver segmentation", "A X-ray image of chest"]
    got = enc.encode(texts)
    assert got.shape == (2, 16) and enc.dim == 16 and path.name in enc.name
    with torch.no_grad():   # the saved weights, not a fresh random init, produce the embedding
        want = F.normalize(model.encode_text(open_clip.get_tokenizer("c2gr-test-tiny-clip")(texts)), dim=1)
    assert torch.allclose(got, want, atol=1e-5)
    assert not hasattr(enc.model, "visual")
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_open_clip_wrong_architecture_names_file(tiny_clip):
    _, path = tiny_clip
    with pytest.raises(ValueError, match=str(path)):
        OpenCLIPEncoder("c2gr-test-tiny-clip-wide", path)
    with pytest.raises(ValueError, match="unknown open_clip model_name"):
        OpenCLIPEncoder("no-such-clip", path)


# ------------------------------------------------------------------ hash encoder and factory

def test_hash_encoder_is_deterministic_bag_of_words():
    enc = HashEncoder(dim=64)
    assert enc.name == "hash (not pretrained)"
    a = enc.encode(["optic disc segmentation", "Segmentation, optic DISC", "liver tumour"])
    assert a.shape == (3, 64)
    assert torch.allclose(a[0], a[1])                       # same words, any order or case
    assert not torch.allclose(a[0], a[2])
    assert torch.allclose(a.norm(dim=1), torch.ones(3))
    assert torch.equal(a, HashEncoder(dim=64).encode(["optic disc segmentation", "Segmentation, optic DISC",
                                                      "liver tumour"]))


def test_encode_rejects_bad_texts():
    with pytest.raises(ValueError, match="non-empty strings"):
        HashEncoder().encode(["ok", ""])
    assert HashEncoder(dim=8).encode([]).shape == (0, 8)


def test_factory_validates_name():
    with pytest.raises(ValueError, match=r"'minilm', 'open_clip', 'hash'"):
        get_text_encoder(PromptConfig(encoder="clip"))
    assert isinstance(get_text_encoder(PromptConfig(encoder="hash")), HashEncoder)


def test_minilm_loads_without_a_progress_bar(capfd):
    # Notebooks run with progress=False showed transformers' "Loading weights 100% 103/103" bar (issue 11).
    from transformers.utils import logging as hf_logging

    from c2gr_core.prompting import text_encoders

    text_encoders._load_sentence_transformer.cache_clear()   # a fresh load, as in a new kernel
    capfd.readouterr()
    MiniLMEncoder()
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err
    assert hf_logging.is_progress_bar_enabled()   # silenced for the load only, not for the whole process
