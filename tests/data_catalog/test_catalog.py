"""Named streams, user stream files, C_max and load_task's error paths."""
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from data_catalog import catalog
from data_catalog.catalog import StreamEntry, load_stream, stream_max_classes
from data_catalog.schema import DataError

# The paper's order (Fig. 3; sec. 4.4.4) and class counts, written out independently of the catalog.
UPSTREAM = ["fundus-a", "fundus-b", "fundus-c", "fundus-d", "mms-a", "mms-b", "mms-c", "mms-d",
            "brats-t1", "brats-t1ce", "brats-t2", "brats-flair", "pancreas", "kits", "lits",
            "glas", "busi", "qatav2", "polyp", "isic18"]
DOWNSTREAM = ["drive", "goals", "segpc", "ddti", "promise12"]
N_CLASSES = {**{n: 2 for n in ("fundus-a", "fundus-b", "fundus-c", "fundus-d", "pancreas", "kits", "lits",
                               "segpc")},
             **{n: 3 for n in ("mms-a", "mms-b", "mms-c", "mms-d", "goals")},
             **{n: 1 for n in ("brats-t1", "brats-t1ce", "brats-t2", "brats-flair", "glas", "busi", "qatav2",
                               "polyp", "isic18", "drive", "ddti", "promise12")}}


def test_named_streams():
    assert set(catalog.list_streams()) >= {"paper-20", "downstream-5", "synthetic-paper-20",
                                           "synthetic-downstream-5"}
    for stream, names in [("paper-20", UPSTREAM), ("downstream-5", DOWNSTREAM)]:
        real = load_stream(stream)
        assert [e.name for e in real] == names and {e.kind for e in real} == {"catalog"}
        twin = load_stream("synthetic-" + stream)
        assert [e.name for e in twin] == names and {e.kind for e in twin} == {"synthetic"}
        assert [str(e) for e in twin] == ["synthetic:" + n for n in names]
        assert all(e.path is None for e in real + twin)


def test_synthetic_twins_cover_every_task():
    twins = {e.name for s in ("synthetic-paper-20", "synthetic-downstream-5") for e in load_stream(s)}
    assert twins == set(catalog.list_tasks()) == set(N_CLASSES)


def test_c_max():
    # independent: largest class list written out in test_cards
    assert stream_max_classes(load_stream("paper-20")) == max(N_CLASSES[n] for n in UPSTREAM) == 3
    assert stream_max_classes(load_stream("synthetic-downstream-5")) == 3
    assert stream_max_classes([StreamEntry("catalog", "glas"), StreamEntry("synthetic", "kits")]) == 2
    with pytest.raises(ValueError):
        stream_max_classes([])


def _user_task(folder: Path, name="my-task", classes=("a", "b", "c", "d"), n=4):
    for sub in ("images", "masks"):
        (folder / "train" / sub).mkdir(parents=True)
    (folder / "card.yaml").write_text(yaml.safe_dump(
        {"name": name, "modality": "MR", "anatomy": "knee", "objective": "cartilage segmentation",
         "classes": list(classes)}))
    for i in range(n):
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(folder / "train" / "images" / f"{i}.png")
        Image.fromarray(np.full((8, 8), i % (len(classes) + 1), np.uint8)).save(folder / "train" / "masks" / f"{i}.png")
    return folder


@pytest.mark.parametrize("as_mapping", [False, True])
def test_user_stream_resolves_relative_folder(tmp_path, monkeypatch, as_mapping):
    _user_task(tmp_path / "tasks" / "knee")
    (tmp_path / "streams").mkdir()
    tasks = ["fundus-a", "../tasks/knee", "synthetic:kits"]
    doc = {"name": "mine", "description": "x", "tasks": tasks} if as_mapping else tasks
    stream_file = tmp_path / "streams" / "mine.yaml"
    stream_file.write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(tmp_path / "tasks")  # relative paths follow the stream file, not the cwd
    entries = load_stream(stream_file)
    assert entries == [StreamEntry("catalog", "fundus-a"),
                       StreamEntry("folder", "my-task", (tmp_path / "tasks" / "knee").resolve()),
                       StreamEntry("synthetic", "kits")]
    assert stream_max_classes(entries) == 4
    data = catalog.load_task(entries[1], image_size=8, seed=0)
    assert data.name == "my-task" and len(data.train) + len(data.val) + len(data.test) == 4


@pytest.mark.parametrize("doc, pattern", [
    (["fundus-a", "fundus-z"], r"entry 2.*valid names.*fundus-a"),
    (["synthetic:nope"], r"entry 1.*names no catalog task.*valid names"),
    (["./no/such/folder"], r"entry 1.*does not exist"),
    (["kits", "kits"], r"entry 2.*repeats"),
    (["kits", 3], r"entry 2"),
    ([], r"non-empty list"),
    ({"tasks": ["kits"], "extra": 1}, r"'tasks'"),
    ({"name": "x"}, r"'tasks'"),
])
def test_bad_stream_names_file_and_entry(tmp_path, doc, pattern):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=pattern) as info:
        load_stream(path)
    assert str(path) in str(info.value)


def test_folder_entry_without_card(tmp_path):
    (tmp_path / "t").mkdir()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(["t"]))
    with pytest.raises(ValueError, match="no card.yaml"):
        load_stream(path)


def test_unknown_stream_lists_named_streams():
    with pytest.raises(ValueError, match="paper-20"):
        load_stream("paper-21")


def test_bad_role_and_entry_kind():
    with pytest.raises(ValueError, match="upstream"):
        catalog.list_tasks("sideways")
    with pytest.raises(ValueError, match="catalog"):
        StreamEntry("zip", "kits")


def test_load_task_without_prepared_data_says_prepare(tmp_path, monkeypatch):
    monkeypatch.delenv(catalog.DATA_ROOT_ENV, raising=False)
    with pytest.raises(DataError, match=r"C2GR_DATA_ROOT.*c2gr prepare lits"):
        catalog.load_task(StreamEntry("catalog", "lits"), image_size=32, seed=0)
    with pytest.raises(DataError, match=r"c2gr prepare kits") as info:
        catalog.load_task("kits", image_size=32, seed=0, data_root=tmp_path)
    assert str(tmp_path / "kits") in str(info.value)
    monkeypatch.setenv(catalog.DATA_ROOT_ENV, str(tmp_path / "root"))
    with pytest.raises(DataError, match=r"c2gr prepare fundus-b") as info:
        catalog.load_task("fundus-b", image_size=32, seed=0)
    assert str(tmp_path / "root" / "fundus-b") in str(info.value)
