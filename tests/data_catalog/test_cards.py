"""Every catalog card validates, and the catalog matches the paper's task list (sec. 4.1.1, Fig. 3)."""
from pathlib import Path

import pytest
import yaml

from data_catalog import catalog
from data_catalog.schema import CardError, load_card

# Written out from the paper / brief, not read from the code under test.
UPSTREAM = ["fundus-a", "fundus-b", "fundus-c", "fundus-d", "mms-a", "mms-b", "mms-c", "mms-d",
            "brats-t1", "brats-t1ce", "brats-t2", "brats-flair", "pancreas", "kits", "lits",
            "glas", "busi", "qatav2", "polyp", "isic18"]
DOWNSTREAM = ["drive", "goals", "segpc", "ddti", "promise12"]
CLASSES = {
    **{f"fundus-{s}": ["optic disc", "optic cup"] for s in "abcd"},
    **{f"mms-{s}": ["left ventricle", "myocardium", "right ventricle"] for s in "abcd"},
    **{f"brats-{s}": ["brain tumour"] for s in ("t1", "t1ce", "t2", "flair")},
    "pancreas": ["pancreas", "pancreatic tumour"], "kits": ["kidney", "kidney tumour"],
    "lits": ["liver", "liver tumour"], "glas": ["gland"], "busi": ["breast tumour"],
    "qatav2": ["covid-19 infection"], "polyp": ["polyp"], "isic18": ["skin lesion"],
    "drive": ["retinal vessel"],
    "goals": ["retinal nerve fibre layer", "ganglion cell-inner plexiform layer", "choroid"],
    "segpc": ["cytoplasm", "nucleus"], "ddti": ["thyroid nodule"], "promise12": ["prostate"],
}
SITES = {"fundus-a": "Aravind Eye Hospital", "fundus-b": "Nidek AFC-210", "fundus-c": "Canon CR-2",
         "fundus-d": "Zeiss Visucam 500", "mms-a": "Siemens", "mms-b": "Philips", "mms-c": "GE",
         "mms-d": "Canon", "brats-t1": "T1", "brats-t1ce": "T1ce", "brats-t2": "T2", "brats-flair": "FLAIR"}
DISPLAY = {"fundus-c": "Fundus-C", "mms-d": "M&Ms-D", "brats-t1ce": "BraTS-T1ce", "qatav2": "QaTaV2",
           "isic18": "ISIC18", "promise12": "PROMISE12", "lits": "LiTS"}
PREPARERS = {"fundus", "mms", "brats", "msd-pancreas", "kits", "msd-liver", "glas", "busi", "qatav2", "polyp",
             "isic18", "drive", "goals", "segpc", "ddti", "promise12"}
MODALITIES = {"fundus photography", "MR", "CT", "histopathology", "ultrasound", "X-ray", "endoscopy",
              "dermoscopy", "OCT", "microscopy"}
CARD_FILES = sorted((Path(catalog.CATALOG_DIR) / "cards").glob("*.yaml"))


def test_catalog_has_exactly_the_paper_tasks():
    assert sorted(p.stem for p in CARD_FILES) == sorted(UPSTREAM + DOWNSTREAM)
    assert catalog.list_tasks("upstream") == UPSTREAM
    assert catalog.list_tasks("downstream") == DOWNSTREAM
    assert catalog.list_tasks() == UPSTREAM + DOWNSTREAM


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_validates_and_is_complete(path):
    card = load_card(path)
    assert card.name == path.stem
    assert card.role == ("upstream" if card.name in UPSTREAM else "downstream")
    assert list(card.classes) == CLASSES[card.name]
    assert card.dataset in PREPARERS
    assert card.modality in MODALITIES
    assert card.display_name == DISPLAY.get(card.name, card.display_name) and card.display_name
    for field in ("citation", "source", "licence", "preprocessing", "anatomy", "objective"):
        assert isinstance(getattr(card, field), str) and len(getattr(card, field)) > 3, field
    assert "256x256" in card.preprocessing
    sp = card.split
    if sp["rule"] == "official":
        assert sp["val_fraction"] == 0.15
    else:
        assert (sp["train"], sp["val"], sp["test"]) == (0.60, 0.15, 0.25)
    assert set(card.synthetic) == {"recipe", "variant"} and card.synthetic["recipe"]
    if card.name in SITES:
        assert SITES[card.name] in card.site  # the site as sec. 4.1.1 names it, phrased for the prompt
        assert card.synthetic["variant"] == SITES[card.name]
    if card.modality == "CT":
        assert card.site  # the source dataset distinguishes the three CT tasks


def test_card_names_unique():
    names = [load_card(p).name for p in CARD_FILES]
    assert len(names) == len(set(names)) == 25


def test_get_card_unknown_lists_valid_names():
    assert catalog.get_card("kits").classes == ("kidney", "kidney tumour")
    with pytest.raises(ValueError, match="valid names.*fundus-a"):
        catalog.get_card("fundus-e")


GOOD = {"name": "t", "modality": "CT", "anatomy": "abdomen", "objective": "liver segmentation",
        "classes": ["liver"]}


@pytest.mark.parametrize("change, pattern", [
    ({"anatomy": None}, "missing required field"),
    ({"colour": "red"}, "unknown field"),
    ({"classes": []}, "classes"),
    ({"classes": "liver"}, "classes"),
    ({"classes": ["liver", "liver"]}, "duplicate"),
    ({"classes": ["background", "liver"]}, "background"),
    ({"role": "sideways"}, "role"),
    ({"split": {"rule": "random", "train": 0.5, "val": 0.1, "test": 0.1}}, "split"),
])
def test_bad_card_names_file(tmp_path, change, pattern):
    raw = {**GOOD, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CardError, match=pattern) as info:
        load_card(path)
    assert str(path) in str(info.value)


def test_catalog_card_name_must_equal_file_stem(tmp_path, monkeypatch):
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(GOOD))
    monkeypatch.setattr(catalog, "CARDS_DIR", tmp_path)
    catalog._cards.cache_clear()
    try:
        with pytest.raises(CardError, match="file name") as info:
            catalog.get_card("t")
        assert str(tmp_path / "other.yaml") in str(info.value)
    finally:
        monkeypatch.undo()
        catalog._cards.cache_clear()
