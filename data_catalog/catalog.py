"""The task catalog: cards of the paper's tasks, named streams, and loading a stream's tasks.

A stream file (``streams/*.yaml``, or any user YAML) is either a list of entries or a mapping
``{name:, description:, tasks: [...]}``. An entry is one of

- a catalog task name (``fundus-a``): the real task, read from prepared data (``c2gr prepare``);
- ``synthetic:<name>``: the procedural twin of a catalog task (data_catalog.synthetic);
- a path to a user task folder (docs/design.md); relative paths resolve against the stream file's folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import yaml

from .schema import CardError, DataError, TaskCard, load_card
from .taskdata import TaskData

CATALOG_DIR = Path(__file__).resolve().parent
CARDS_DIR = CATALOG_DIR / "cards"
STREAMS_DIR = CATALOG_DIR / "streams"
DATA_ROOT_ENV = "C2GR_DATA_ROOT"
ROLES = ("upstream", "downstream")
KINDS = ("catalog", "synthetic", "folder")
SYNTHETIC_PREFIX = "synthetic:"
# The paper's order (Fig. 3; sec. 4.4.4) lives in these two stream files, not in a second list here.
_ORDER_STREAMS = ("paper-20", "downstream-5")


@dataclass(frozen=True)
class StreamEntry:
    kind: str          # "catalog" | "synthetic" | "folder"
    name: str          # the task name (catalog name, or the folder card's name)
    path: Path | None = None  # the task folder, for kind == "folder"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"StreamEntry.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if (self.kind == "folder") != (self.path is not None):
            raise ValueError("StreamEntry.path is required for kind 'folder' and only for it")

    def __str__(self) -> str:
        if self.kind == "synthetic":
            return SYNTHETIC_PREFIX + self.name
        return str(self.path) if self.kind == "folder" else self.name


@lru_cache(maxsize=1)
def _cards() -> dict[str, TaskCard]:
    cards = {}
    for path in sorted(CARDS_DIR.glob("*.yaml")):
        card = load_card(path)
        if card.name != path.stem:
            raise CardError(f"{path}: card name {card.name!r} must equal the file name {path.stem!r}")
        cards[card.name] = card
    return cards


@lru_cache(maxsize=1)
def _paper_order() -> tuple[str, ...]:
    names = list(_cards())
    ordered = [e.name for s in _ORDER_STREAMS for e in load_stream(s)]
    return tuple(ordered + sorted(n for n in names if n not in ordered))


def _valid_names() -> list[str]:
    # Parsing the order streams must not depend on their own order (no recursion on a bad entry).
    return sorted(_cards())


def list_tasks(role: str | None = None) -> list[str]:
    """Catalog task names in the paper's order (upstream Fundus-A..ISIC18, then downstream)."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be None or one of {list(ROLES)}, got {role!r}")
    cards = _cards()
    return [n for n in _paper_order() if role is None or cards[n].role == role]


def get_card(name: str) -> TaskCard:
    cards = _cards()
    if name not in cards:
        raise ValueError(f"unknown catalog task {name!r}; valid names: {list_tasks()}")
    return cards[name]


def list_streams() -> list[str]:
    return sorted(p.stem for p in STREAMS_DIR.glob("*.yaml"))


def _stream_file(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    if text in list_streams():
        return STREAMS_DIR / f"{text}.yaml"
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or os.sep in text or "/" in text:
        if not path.is_file():
            raise ValueError(f"stream file {path} does not exist")
        return path
    raise ValueError(f"unknown stream {text!r}; named streams: {list_streams()} (or give a path to a .yaml file)")


def load_stream(name_or_path: str | os.PathLike) -> list[StreamEntry]:
    """Entries of a named stream or a stream YAML file; errors name the file and the entry."""
    path = _stream_file(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read stream ({e})") from e
    if isinstance(raw, dict):
        extra = sorted(set(raw) - {"name", "description", "tasks"})
        if extra or "tasks" not in raw:
            raise ValueError(f"{path}: a stream mapping needs 'tasks' and may have 'name', 'description'; "
                             f"got keys {sorted(raw)}")
        raw = raw["tasks"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: a stream must be a non-empty list of entries, got {raw!r}")
    entries = [parse_entry(item, base_dir=path.parent, origin=f"{path}: entry {i + 1}")
               for i, item in enumerate(raw)]
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.name in seen:
            raise ValueError(f"{path}: entry {i + 1} ({e}) repeats task name {e.name!r} of entry {seen[e.name] + 1}; "
                             "task names in a stream must be unique")
        seen[e.name] = i
    return entries


def parse_entry(item: object, base_dir: str | os.PathLike = ".", origin: str = "stream entry") -> StreamEntry:
    """One stream entry (see module docstring); folders are checked to hold a valid card.yaml."""
    if not isinstance(item, str) or not item.strip():
        raise ValueError(f"{origin}: must be a catalog name, 'synthetic:<name>' or a task folder path, got {item!r}")
    item = item.strip()
    if item.startswith(SYNTHETIC_PREFIX):
        name = item[len(SYNTHETIC_PREFIX):]
        if name not in _cards():
            raise ValueError(f"{origin}: {item!r} names no catalog task; valid names: {_valid_names()}")
        return StreamEntry("synthetic", name)
    if item in _cards():
        return StreamEntry("catalog", item)
    folder = Path(item).expanduser()
    if not folder.is_absolute():
        folder = Path(base_dir) / folder
    looks_like_path = "/" in item or os.sep in item or item.startswith((".", "~"))
    if folder.is_dir():
        card_file = folder / "card.yaml"
        if not card_file.is_file():
            raise ValueError(f"{origin}: task folder {folder} has no card.yaml")
        return StreamEntry("folder", load_card(card_file).name, folder.resolve())
    if looks_like_path:
        raise ValueError(f"{origin}: task folder {folder} does not exist")
    raise ValueError(f"{origin}: {item!r} is not a catalog task, 'synthetic:<name>' or an existing task folder; "
                     f"valid names: {_valid_names()}")


def entry_card(entry: StreamEntry) -> TaskCard:
    if entry.kind == "folder":
        return load_card(entry.path / "card.yaml")
    return get_card(entry.name)


def stream_max_classes(entries: Iterable[StreamEntry]) -> int:
    """C_max: the largest foreground class count in the stream (segmentor has C_max + 1 outputs)."""
    counts = [entry_card(e).n_classes for e in entries]
    if not counts:
        raise ValueError("stream_max_classes: the stream has no entries")
    return max(counts)


def default_data_root() -> Path | None:
    root = os.environ.get(DATA_ROOT_ENV)
    return Path(root).expanduser() if root else None


def load_task(entry: StreamEntry | str, image_size: int, seed: int, data_root: str | os.PathLike | None = None,
              n_synthetic: tuple[int, int, int] = (48, 8, 16)) -> TaskData:
    """Materialise one stream entry as TaskData at image_size x image_size.

    n_synthetic = (n_train, n_val, n_test) applies to synthetic twins only; real tasks keep their splits.
    """
    if isinstance(entry, str):
        entry = parse_entry(entry)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if entry.kind == "synthetic":
        from .synthetic import synthetic_task  # written separately; imported only when a twin is asked for

        n_train, n_val, n_test = n_synthetic
        return synthetic_task(get_card(entry.name), image_size=image_size, n_train=n_train, n_val=n_val,
                              n_test=n_test, seed=seed)
    if entry.kind == "folder":
        from .folder import load_task_folder

        return load_task_folder(entry.path, image_size=image_size, seed=seed)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    card = get_card(entry.name)
    if root is None:
        raise DataError(f"task {entry.name!r} needs prepared data, but no data root is set: pass data_root or set "
                        f"{DATA_ROOT_ENV}, after running `c2gr prepare {entry.name} SRC <root>/{entry.name}`; "
                        f"or use the procedural twin 'synthetic:{entry.name}'")
    path = root / entry.name
    if not path.is_dir():
        raise DataError(f"{path}: no prepared data for task {entry.name!r}; run `c2gr prepare {entry.name} SRC "
                        f"{path}` on the downloaded dataset ({card.source or 'see its card'}), "
                        f"or use 'synthetic:{entry.name}'")
    from .prepared import load_prepared  # written separately; only real-data runs need it

    return load_prepared(path, image_size)
