"""Task cards: the YAML description of one segmentation task, and its validation.

A card names the task and the three prompt attributes of the paper (sec. 3.2.1: imaging
modality I, anatomical region A, segmentation objective SO), optionally the site or device
(sec. 4.2: added to the prompt for tasks that share a modality), and the foreground classes.
Catalog cards carry provenance too (citation, source, licence, split rule, preprocessing).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml


class CardError(ValueError):
    """A task card is missing, unreadable or has missing / unknown / malformed fields."""


class DataError(ValueError):
    """Task data is unusable: shape mismatch, labels outside the card, NaN/Inf, empty split..."""


REQUIRED_FIELDS = ("name", "modality", "anatomy", "objective", "classes")
# Provenance fields only the catalog's own cards need; a user's card may carry them too.
OPTIONAL_FIELDS = (
    "site", "display_name", "role", "dataset", "citation", "source", "licence",
    "split", "preprocessing", "synthetic",
)
ROLES = ("upstream", "downstream", "user")
SPLIT_RULES = ("official", "random")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class TaskCard:
    name: str
    modality: str
    anatomy: str
    objective: str
    classes: tuple[str, ...]
    site: str | None = None
    display_name: str | None = None
    role: str = "user"
    dataset: str | None = None
    citation: str | None = None
    source: str | None = None
    licence: str | None = None
    split: dict = field(default_factory=lambda: {"rule": "random", "train": 0.60, "val": 0.15, "test": 0.25})
    preprocessing: str | None = None
    synthetic: dict | None = None

    @property
    def n_classes(self) -> int:
        """Number of foreground classes (label values 1..n_classes; 0 is background)."""
        return len(self.classes)

    @property
    def title(self) -> str:
        return self.display_name or self.name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return {k: v for k, v in d.items() if v is not None}


def card_from_dict(raw: Any, origin: str = "<card>") -> TaskCard:
    """Validate a parsed card; every error names `origin` (the file) and the field."""
    if not isinstance(raw, dict):
        raise CardError(f"{origin}: a card must be a YAML mapping, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing:
        raise CardError(f"{origin}: missing required field(s) {missing}; required: {list(REQUIRED_FIELDS)}")
    unknown = sorted(set(raw) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise CardError(f"{origin}: unknown field(s) {unknown}; allowed: "
                        f"{list(REQUIRED_FIELDS) + list(OPTIONAL_FIELDS)}")
    for key in ("name", "modality", "anatomy", "objective") + ("site", "display_name", "dataset",
                                                               "citation", "source", "licence",
                                                               "preprocessing"):
        if key in raw and raw[key] is not None and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise CardError(f"{origin}: field '{key}' must be a non-empty string, got {raw[key]!r}")
    if not _NAME_RE.match(raw["name"]):
        raise CardError(f"{origin}: field 'name' must be lower-case letters, digits, '-' or '_', got {raw['name']!r}")
    classes = raw["classes"]
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) and c.strip() for c in classes)):
        raise CardError(f"{origin}: field 'classes' must be a non-empty list of foreground class names "
                        f"(label 1 = first entry; 0 is background), got {classes!r}")
    if len(set(classes)) != len(classes):
        raise CardError(f"{origin}: field 'classes' has duplicate names: {classes}")
    if any(c.strip().lower() == "background" for c in classes):
        raise CardError(f"{origin}: field 'classes' lists foreground classes only; drop 'background'")
    role = raw.get("role", "user")
    if role not in ROLES:
        raise CardError(f"{origin}: field 'role' must be one of {list(ROLES)}, got {role!r}")
    split = raw.get("split", TaskCard.__dataclass_fields__["split"].default_factory())
    _check_split(split, origin)
    synthetic = raw.get("synthetic")
    if synthetic is not None and not isinstance(synthetic, dict):
        raise CardError(f"{origin}: field 'synthetic' must be a mapping, got {synthetic!r}")
    return TaskCard(
        name=raw["name"], modality=raw["modality"].strip(), anatomy=raw["anatomy"].strip(),
        objective=raw["objective"].strip(), classes=tuple(c.strip() for c in classes),
        site=raw.get("site"), display_name=raw.get("display_name"), role=role,
        dataset=raw.get("dataset"), citation=raw.get("citation"), source=raw.get("source"),
        licence=raw.get("licence"), split=dict(split), preprocessing=raw.get("preprocessing"),
        synthetic=synthetic,
    )


def _check_split(split: Any, origin: str) -> None:
    if not isinstance(split, dict) or split.get("rule") not in SPLIT_RULES:
        raise CardError(f"{origin}: field 'split' must be a mapping with 'rule' in {list(SPLIT_RULES)}, got {split!r}")
    if split["rule"] == "official":
        vf = split.get("val_fraction", 0.15)
        if not (isinstance(vf, (int, float)) and 0 < vf < 1):
            raise CardError(f"{origin}: split.val_fraction must be in (0, 1), got {vf!r}")
    else:
        fr = [split.get(k) for k in ("train", "val", "test")]
        if not all(isinstance(f, (int, float)) and 0 < f < 1 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise CardError(f"{origin}: random split needs train/val/test fractions in (0, 1) summing to 1, got {split!r}")


def load_card(path: str | Path) -> TaskCard:
    """Read and validate a card file; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CardError(f"{path}: cannot read card ({e.strerror or e})") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CardError(f"{path}: not valid YAML ({e})") from e
    return card_from_dict(raw, origin=str(path))
