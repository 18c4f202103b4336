"""Preparers: public datasets in their official layouts -> the prepared format (prepared.py).

    prepare("brats-t1ce", "/data/BraTS2021", "/data/prepared/brats-t1ce")
    prepare("brats", "/data/BraTS2021", "/data/prepared/x", sequence="t1ce")   # same thing

`PREPARERS` maps a dataset id (a card's `dataset` field) to its Preparer; `PREPARE_OPTIONS`
maps each catalog task to (dataset id, options), since several tasks come from one source
(fundus-a..d: site; mms-a..d: vendor; brats-*: sequence).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..schema import CardError, DataError, TaskCard, load_card
from .common import Case, assign_splits, write_cases
from . import images2d, volumes

CARDS_DIR = Path(__file__).resolve().parent.parent / "cards"


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {v!r}")


@dataclass(frozen=True)
class Option:
    allowed: tuple | None = None                 # None: free-form (e.g. a path)
    coerce: Callable[[Any], Any] = lambda v: v   # CLI values arrive as strings
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class Preparer:
    id: str
    classes: tuple[str, ...]        # label 1..C in this order; must match the card
    collect: Callable[..., list[Case]]
    options: Mapping[str, Option] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return (self.collect.__doc__ or "").strip().splitlines()[0]

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"preparer '{self.id}' has no option(s) {unknown}; allowed: {sorted(self.options)}")
        out = {}
        for name, opt in self.options.items():
            if name not in options or options[name] is None:
                if opt.required:
                    raise ValueError(f"preparer '{self.id}' needs option '{name}', one of {list(opt.allowed)}")
                if opt.default is not None:
                    out[name] = opt.default
                continue
            try:
                value = opt.coerce(options[name])
            except (TypeError, ValueError) as e:
                raise ValueError(f"preparer '{self.id}': bad value {options[name]!r} for option '{name}' ({e})") from e
            if opt.allowed is not None and value not in opt.allowed:
                raise ValueError(f"preparer '{self.id}': option '{name}' must be one of {list(opt.allowed)}, "
                                 f"got {options[name]!r}")
            out[name] = value
        return out


PREPARERS: dict[str, Preparer] = {p.id: p for p in (
    Preparer("fundus", ("optic disc", "optic cup"), images2d.collect_fundus,
             {"site": Option((1, 2, 3, 4), int, required=True)}),
    Preparer("mms", ("left ventricle", "myocardium", "right ventricle"), volumes.collect_mms,
             {"vendor": Option(tuple(volumes.MMS_VENDORS), lambda v: str(v).strip().upper(), required=True),
              "info_csv": Option(None, str)}),
    Preparer("brats", ("brain tumour",), volumes.collect_brats,
             {"sequence": Option(volumes.BRATS_SEQUENCES, lambda v: str(v).strip().lower(), required=True)}),
    Preparer("msd-pancreas", ("pancreas", "pancreatic tumour"), volumes.collect_msd_pancreas),
    Preparer("kits", ("kidney", "kidney tumour"), volumes.collect_kits),
    Preparer("msd-liver", ("liver", "liver tumour"), volumes.collect_msd_liver),
    Preparer("glas", ("gland",), images2d.collect_glas),
    Preparer("busi", ("breast tumour",), images2d.collect_busi,
             {"include_normal": Option((True, False), _to_bool, default=False)}),
    Preparer("qatav2", ("covid-19 infection",), images2d.collect_qatav2),
    Preparer("polyp", ("polyp",), images2d.collect_polyp),
    Preparer("isic18", ("skin lesion",), images2d.collect_isic18),
    Preparer("drive", ("retinal vessel",), images2d.collect_drive),
    Preparer("goals", ("retinal nerve fibre layer", "ganglion cell-inner plexiform layer", "choroid"),
             images2d.collect_goals),
    Preparer("segpc", ("cytoplasm", "nucleus"), images2d.collect_segpc),
    Preparer("ddti", ("thyroid nodule",), images2d.collect_ddti),
    Preparer("promise12", ("prostate",), volumes.collect_promise12),
)}

# Catalog task -> (dataset id, options). Fundus sites follow the devices the paper names
# (sec. 4.1.1) on the DoFE domains: Domain1 Drishti-GS (Aravind), Domain2 RIM-ONE-r3
# (Nidek AFC-210), Domain3 REFUGE train (Zeiss Visucam 500), Domain4 REFUGE val (Canon CR-2);
# the paper lists Fundus-C as Canon and Fundus-D as Zeiss, hence c -> 4 and d -> 3.
PREPARE_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "fundus-a": ("fundus", {"site": 1}), "fundus-b": ("fundus", {"site": 2}),
    "fundus-c": ("fundus", {"site": 4}), "fundus-d": ("fundus", {"site": 3}),
    "mms-a": ("mms", {"vendor": "A"}), "mms-b": ("mms", {"vendor": "B"}),
    "mms-c": ("mms", {"vendor": "C"}), "mms-d": ("mms", {"vendor": "D"}),
    "brats-t1": ("brats", {"sequence": "t1"}), "brats-t1ce": ("brats", {"sequence": "t1ce"}),
    "brats-t2": ("brats", {"sequence": "t2"}), "brats-flair": ("brats", {"sequence": "flair"}),
    "pancreas": ("msd-pancreas", {}), "kits": ("kits", {}), "lits": ("msd-liver", {}),
    "glas": ("glas", {}), "busi": ("busi", {}), "qatav2": ("qatav2", {}), "polyp": ("polyp", {}),
    "isic18": ("isic18", {}),
    "drive": ("drive", {}), "goals": ("goals", {}), "segpc": ("segpc", {}), "ddti": ("ddti", {}),
    "promise12": ("promise12", {}),
}


def resolve(dataset: str, options: Mapping[str, Any] | None = None) -> tuple[Preparer, str | None, dict]:
    """(preparer, catalog task name or None, checked options) for a task name or dataset id."""
    options = dict(options or {})
    if dataset in PREPARE_OPTIONS:
        ds_id, fixed = PREPARE_OPTIONS[dataset]
        prep = PREPARERS[ds_id]
        opts = prep.resolve_options({**fixed, **options})
        clash = {k: opts[k] for k, v in fixed.items() if opts.get(k) != v}
        if clash:
            raise ValueError(f"catalog task '{dataset}' fixes {fixed}; got conflicting option(s) {clash}")
        return prep, dataset, opts
    if dataset not in PREPARERS:
        raise ValueError(f"unknown dataset {dataset!r}; catalog tasks: {sorted(PREPARE_OPTIONS)}; "
                         f"dataset ids: {sorted(PREPARERS)}")
    prep = PREPARERS[dataset]
    opts = prep.resolve_options(options)
    task = next((t for t, (d, o) in PREPARE_OPTIONS.items()
                 if d == dataset and all(opts.get(k) == v for k, v in o.items())), None)
    return prep, task, opts


def prepare(dataset: str, src: str | Path, dst: str | Path, card: TaskCard | str | Path | None = None,
            seed: int = 0, overwrite: bool = False, *, progress: bool = True, **options) -> Path:
    """Turn a downloaded public dataset into a prepared task directory; returns `dst`.

    CLI: `c2gr prepare DATASET SRC DST [--card CARD] [--seed N] [--overwrite] [--option KEY=VALUE ...]`

    dataset: a catalog task name (`fundus-c`, `brats-t1ce`, `pancreas`, ... see PREPARE_OPTIONS)
        or a dataset id (`fundus`, `brats`, `msd-pancreas`, ... see PREPARERS) plus its options.
    src: the dataset as downloaded and unpacked, in its official layout (each collector's
        docstring gives the layout it reads, e.g. `describe("kits")`).
    dst: the prepared directory to create (must not exist unless overwrite=True). Nothing is
        written there unless every case was read and every split is non-empty.
    card: a TaskCard or a card file; default the catalog card of the task
        (data_catalog/cards/<task>.yaml). Its classes fix the label order and its `split`
        rule the split (official: official test + 15 % of train held out; random: 60/15/25),
        always by case.
    seed: seeds the random split / validation hold-out.
    options: dataset options, e.g. site=1..4 (fundus), vendor=A..D and info_csv=PATH (mms),
        sequence=t1|t1ce|t2|flair (brats), include_normal=true (busi).
    Raises DataError (naming the file) for unreadable/corrupt files, shape mismatches, label
    values outside the dataset's documented set, NaN/Inf, missing folders, no cases.
    """
    prep, task, opts = resolve(dataset, options)
    if card is None:
        if task is None:
            raise ValueError(f"no catalog task matches dataset '{prep.id}' with options {opts}; pass card=")
        card = load_card(CARDS_DIR / f"{task}.yaml")
    elif not isinstance(card, TaskCard):
        card = load_card(card)
    if card.n_classes != len(prep.classes):
        raise CardError(f"card '{card.name}' lists {card.n_classes} classes {list(card.classes)}, but dataset "
                        f"'{prep.id}' yields {len(prep.classes)}: {list(prep.classes)}")
    if card.dataset is not None and card.dataset != prep.id:
        raise CardError(f"card '{card.name}' is for dataset '{card.dataset}', not '{prep.id}'")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: already exists; pass overwrite=True to replace it")
    cases = prep.collect(src, **opts)
    if not cases:
        raise DataError(f"{src}: no labelled {prep.id} cases found (expected: {prep.summary})")
    meta = {"dataset": prep.id, "options": {k: str(v) for k, v in opts.items()}, "source": str(src.resolve())}
    return write_cases(cases, card, dst, seed=seed, overwrite=overwrite, origin=str(src), meta=meta,
                       progress=progress)


def describe(dataset: str) -> str:
    """The layout documentation of a dataset id or catalog task (for `c2gr prepare --help`)."""
    prep, _, _ = resolve(dataset, {}) if dataset in PREPARE_OPTIONS else (PREPARERS.get(dataset), None, None)
    if prep is None:
        raise ValueError(f"unknown dataset {dataset!r}; dataset ids: {sorted(PREPARERS)}")
    return f"{prep.id}: classes {list(prep.classes)}\n{prep.collect.__doc__ or ''}"


__all__ = ["PREPARERS", "PREPARE_OPTIONS", "Preparer", "Option", "Case", "prepare", "resolve", "describe",
           "assign_splits", "write_cases"]
