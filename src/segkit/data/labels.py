"""Label tables: class names, colours and which source ids (or colours) each train id takes, as data.

A table is written in YAML (``conf/data/labels/*.yaml``) and compiled to a lookup array so a raw
mask is remapped to train ids in one vectorised step (``LabelTable.remap``). Users reshape a table
without code: ``merge: {vehicle: [car, truck, bus]}`` folds classes by name, ``base: cityscapes_19``
starts their own file from a shipped table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segkit import SegkitError
from segkit.visualize import default_color

IGNORE_INDEX = 255


def tables_dir() -> Path:
    """The shipped label tables (``conf/data/labels``)."""
    from segkit.files import conf_dir

    return conf_dir() / "data" / "labels"


log = logging.getLogger("segkit")

Color = tuple[int, int, int]


def train_ids_to_source_ids(train_ids: np.ndarray, source_ids: Sequence[Sequence[int]], fill: int = 0) -> np.ndarray:
    """Train ids -> each class's first source id (``source_ids[k]``: the dataset ids merged into class k); ``fill``
    where a class has none."""
    lut = np.full(256, fill, dtype=np.int64)
    for k, ids in enumerate(source_ids):
        if ids:
            lut[k] = ids[0]
    return lut[np.clip(train_ids, 0, 255)]


@dataclass(frozen=True)
class LabelTable:
    """Train classes and the mapping from source mask ids (or RGB colours) to train ids.

    ``source_ids[k]`` lists the raw ids that become train id ``k``; ``ignore_ids`` become
    ``ignore_index``. ``source_colors[k]`` does the same for RGB-coded masks. Any other raw value is
    unknown: an error, or ignored (with one warning) when ``unknown='ignore'``.
    """

    names: tuple[str, ...]
    colors: tuple[Color, ...]
    source_ids: tuple[tuple[int, ...], ...]
    ignore_ids: tuple[int, ...] = ()
    ignore_index: int = IGNORE_INDEX
    unknown: str = "error"
    name: str = "labels"
    source_colors: tuple[tuple[Color, ...], ...] = ()
    ignore_colors: tuple[Color, ...] = ()
    _lut: np.ndarray = field(init=False, repr=False, compare=False)
    _color_codes: np.ndarray = field(init=False, repr=False, compare=False)
    _color_values: np.ndarray = field(init=False, repr=False, compare=False)
    _warned: list = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.names:
            raise SegkitError(f"label table '{self.name}' has no classes; add entries under 'classes'")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise SegkitError(f"label table '{self.name}': class name(s) {dup} appear twice")
        if self.unknown not in ("error", "ignore"):
            raise SegkitError(f"label table '{self.name}': unknown={self.unknown!r}; use 'error' or 'ignore'")
        if self.num_classes > self.ignore_index and self.ignore_index >= 0:
            raise SegkitError(f"label table '{self.name}': {self.num_classes} classes collide with ignore_index")
        object.__setattr__(self, "_lut", self._compile_ids())
        codes, values = self._compile_colors()
        object.__setattr__(self, "_color_codes", codes)
        object.__setattr__(self, "_color_values", values)
        object.__setattr__(self, "_warned", [])

    def _compile_ids(self) -> np.ndarray:
        all_ids = [i for ids in self.source_ids for i in ids] + list(self.ignore_ids)
        if any(i < 0 or i > 65535 for i in all_ids):
            raise SegkitError(f"label table '{self.name}': source ids must lie in 0..65535")
        size = 256 if max(all_ids + [0]) < 256 else 65536
        lut = np.full(size, -1, dtype=np.int64)
        for train_id, ids in enumerate(self.source_ids):
            for source_id in ids:
                if lut[source_id] != -1:
                    raise SegkitError(
                        f"label table '{self.name}': source id {source_id} is claimed by both "
                        f"'{self.names[lut[source_id]]}' and '{self.names[train_id]}'"
                    )
                lut[source_id] = train_id
        for source_id in self.ignore_ids:
            if lut[source_id] >= 0:
                raise SegkitError(
                    f"label table '{self.name}': source id {source_id} is both ignored and class "
                    f"'{self.names[lut[source_id]]}'"
                )
            lut[source_id] = self.ignore_index
        return lut

    def _compile_colors(self) -> tuple[np.ndarray, np.ndarray]:
        owner: dict[int, str] = {}
        pairs: list[tuple[int, int]] = []
        per_class = list(self.source_colors) + [()] * (self.num_classes - len(self.source_colors))
        entries = [(c, k, self.names[k]) for k, cs in enumerate(per_class) for c in cs]
        entries += [(c, self.ignore_index, "ignore") for c in self.ignore_colors]
        for color, value, who in entries:
            code = _color_code(color)
            if code in owner:
                raise SegkitError(
                    f"label table '{self.name}': source colour {tuple(color)} is claimed by both '{owner[code]}' and '{who}'"
                )
            owner[code] = who
            pairs.append((code, value))
        pairs.sort()
        return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def has_source_colors(self) -> bool:
        """Whether RGB-coded masks can be decoded with this table."""
        return len(self._color_codes) > 0

    def to_config(self) -> dict:
        """The table in its expanded YAML form, every ``base``, ``merge`` and zero-label step already applied:
        ``from_config`` of it gives this table back. Checkpoints store this form, so a loaded model needs no table
        file (and follows no path someone else's file names)."""
        source_colors = list(self.source_colors) + [()] * (self.num_classes - len(self.source_colors))
        return {
            "name": self.name,
            "classes": [
                {"name": n, "color": list(c), "ids": list(ids), "source_colors": [list(x) for x in colors]}
                for n, c, ids, colors in zip(self.names, self.colors, self.source_ids, source_colors, strict=True)
            ],
            "ignore_ids": list(self.ignore_ids),
            "ignore_colors": [list(c) for c in self.ignore_colors],
            "ignore_index": self.ignore_index,
            "unknown": self.unknown,
        }

    @classmethod
    def from_config(cls, cfg: Mapping) -> LabelTable:
        """Build from the YAML form.

        Keys: ``classes: [{name, color, ids, source_colors}]``, ``ignore_ids``, ``ignore_colors``,
        ``ignore_classes`` (named source classes that are ignored unless a merge pulls them into a class),
        ``ignore_index``, ``unknown``, ``rgb_masks`` (each class colour is also its source colour),
        ``merge: {new_name: [class names]}``, ``reduce_zero_label`` with ``zero_label: {name, color}``,
        ``base`` (a shipped table name or YAML path whose keys this one extends).
        """
        cfg = _with_base(dict(cfg))
        name = str(cfg.get("name", "labels"))
        classes = cfg.get("classes")
        if not classes:
            raise SegkitError(f"label table '{name}' needs a non-empty 'classes' list of {{name, color, ids}}")
        entries = [_class_entry(name, k, dict(e)) for k, e in enumerate(classes)]
        entries += [
            {**_class_entry(name, k, dict(e)), "ignored": True}
            for k, e in enumerate(cfg.get("ignore_classes", []) or [])
        ]
        ignore_ids = [int(i) for i in cfg.get("ignore_ids", []) or []]
        rzl = cfg.get("reduce_zero_label")
        if rzl is not None:
            entries, ignore_ids = _apply_zero_label(name, entries, ignore_ids, bool(rzl), cfg.get("zero_label"))
        if cfg.get("merge"):
            entries = _apply_merge(name, entries, cfg["merge"])
        ignore_ids += [i for e in entries if e.get("ignored") for i in e["ids"]]
        ignore_colors = [c for e in entries if e.get("ignored") for c in e["source_colors"]]
        entries = [e for e in entries if not e.get("ignored")]
        rgb = bool(cfg.get("rgb_masks", False))
        return cls(
            names=tuple(e["name"] for e in entries),
            colors=tuple(e["color"] for e in entries),
            source_ids=tuple(e["ids"] for e in entries),
            ignore_ids=tuple(ignore_ids),
            ignore_index=int(cfg.get("ignore_index", IGNORE_INDEX)),
            unknown=str(cfg.get("unknown", "error")),
            name=name,
            source_colors=tuple(e["source_colors"] or ((e["color"],) if rgb else ()) for e in entries),
            ignore_colors=tuple([_as_color(name, c) for c in cfg.get("ignore_colors", []) or []] + ignore_colors),
        )

    def remap(self, mask: np.ndarray, source: str = "mask") -> np.ndarray:
        """Raw ids (H x W, any integer dtype) or RGB colours (H x W x 3) -> train ids (int64)."""
        if mask.ndim == 3:
            return self._remap_colors(mask, source)
        if mask.size and int(mask.max()) >= len(self._lut) or mask.size and int(mask.min()) < 0:
            outside = (mask < 0) | (mask >= len(self._lut))
            out = self._lut[np.where(outside, 0, mask)]
            out[outside] = -1
        else:
            out = self._lut[mask]
        unknown = out < 0
        if unknown.any():
            values = [int(v) for v in np.unique(mask[unknown])]
            self._unknown(out, unknown, source, f"mask value(s) {values[:10]}")
        return out

    def _remap_colors(self, mask: np.ndarray, source: str) -> np.ndarray:
        if not self.has_source_colors:
            raise SegkitError(
                f"{source}: mask has {mask.shape[2]} channels but label table '{self.name}' has no source colours; "
                f"give each class 'source_colors' (or set rgb_masks: true), or use single-channel id masks"
            )
        rgb = mask[..., :3].astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        pos = np.minimum(np.searchsorted(self._color_codes, codes), len(self._color_codes) - 1)
        out = self._color_values[pos]
        unknown = self._color_codes[pos] != codes
        if unknown.any():
            colors = [tuple(int(x) for x in _code_color(c)) for c in np.unique(codes[unknown])[:10]]
            out = out.copy()
            self._unknown(out, unknown, source, f"mask colour(s) {colors}")
        return out

    def _unknown(self, out: np.ndarray, unknown: np.ndarray, source: str, what: str) -> None:
        if self.unknown == "error":
            raise SegkitError(
                f"{source}: {what} are not in label table '{self.name}'; add them to a class or to "
                f"ignore_ids/ignore_colors, or set data.unknown_ids=ignore"
            )
        out[unknown] = self.ignore_index
        if not self._warned:
            self._warned.append(True)
            log.warning(
                f"{source}: {what} are not in label table '{self.name}'; ignoring them "
                f"(data.unknown_ids=ignore; this warning is shown once)"
            )

    def to_source_ids(self, train_ids: np.ndarray, fill: int = 0) -> np.ndarray:
        """Train ids -> each class's first source id (e.g. predictions back to Cityscapes labelIds)."""
        return train_ids_to_source_ids(train_ids, self.source_ids, fill)

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids (H x W) -> RGB uint8 image in the table's colours; ignore pixels are black."""
        from segkit.visualize import colorize

        return colorize(train_ids, self.colors)

    def fingerprint(self) -> str:
        """A short digest of everything that changes the train ids: keys the class-weight cache."""
        import hashlib

        text = repr(
            (self.names, self.source_ids, self.ignore_ids, self.ignore_index, self.source_colors, self.ignore_colors)
        )
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_table(spec: Any, **overrides: Any) -> LabelTable:
    """A table from a ``LabelTable``, its YAML mapping, a YAML file path or a shipped table's name."""
    from omegaconf import DictConfig, OmegaConf

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(spec, LabelTable):
        if "reduce_zero_label" in overrides:
            raise SegkitError("data.reduce_zero_label needs the label table's YAML form, not a built LabelTable")
        return dataclasses.replace(spec, unknown=overrides["unknown"]) if "unknown" in overrides else spec
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    elif isinstance(spec, (str, Path)):
        spec = _read_table_file(str(spec))
    if not isinstance(spec, Mapping):
        raise SegkitError(f"data.labels must be a table mapping, a YAML path or a table name; got {spec!r}")
    cfg = dict(spec)
    cfg.update(overrides)
    return LabelTable.from_config(cfg)


def _read_table_file(spec: str) -> dict:
    from omegaconf import OmegaConf

    path = Path(spec).expanduser()
    if not path.is_file():
        path = tables_dir() / f"{spec}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in tables_dir().glob("*.yaml"))
        raise SegkitError(f"label table '{spec}' is neither a YAML file nor a shipped table; shipped: {shipped}")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(data, dict):
        raise SegkitError(f"label table file '{path}' must hold a mapping with 'classes'")
    data.setdefault("name", path.stem)
    return data


def _with_base(cfg: dict) -> dict:
    """``base: <table>`` -> the base table's keys, overridden by this one's (merge/ignore keys extend)."""
    base = cfg.pop("base", None)
    if not base:
        return cfg
    merged = _with_base(_read_table_file(str(base)))
    if cfg.get("merge") and merged.get("merge"):
        cfg["merge"] = {**merged["merge"], **cfg["merge"]}
    merged.update(cfg)
    return merged


def _class_entry(table: str, k: int, entry: dict) -> dict:
    if "name" not in entry:
        raise SegkitError(f"label table '{table}': classes[{k}] has no 'name'")
    ids = entry.get("ids", [k])
    ids = ids if isinstance(ids, Sequence) and not isinstance(ids, str) else [ids]
    return {
        "name": str(entry["name"]),
        "color": _as_color(table, entry.get("color") or default_color(k)),
        "ids": tuple(int(i) for i in ids),
        "source_colors": tuple(_as_color(table, c) for c in entry.get("source_colors", []) or []),
    }


def _apply_zero_label(table: str, entries: list[dict], ignore_ids: list[int], reduce: bool, zero) -> tuple:
    """ADE20K-style id 0: ignored (``reduce_zero_label: true``) or kept as its own class 0."""
    if reduce:
        return entries, sorted(set(ignore_ids) | {0})
    if not zero or "name" not in zero:
        raise SegkitError(f"label table '{table}': reduce_zero_label=false needs zero_label: {{name: ...}} for id 0")
    entry = _class_entry(table, 0, {"ids": [0], **dict(zero)})
    return [entry] + entries, [i for i in ignore_ids if i != 0]


def _apply_merge(table: str, entries: list[dict], merge: Mapping) -> list[dict]:
    """Fold classes (and named ignored classes) by name into one class each.

    A merged class takes the place and colour of its first trained member; one made only of ignored
    classes goes last.
    """
    by_name = {e["name"]: e for e in entries}
    claimed: dict[str, str] = {}
    new: dict[str, dict] = {}
    for target, spec in dict(merge).items():
        members = spec.get("classes") if isinstance(spec, Mapping) else spec
        if isinstance(members, str) or not members:
            raise SegkitError(f"label table '{table}': merge.{target} must be a list of class names")
        for member in members:
            if member not in by_name:
                raise SegkitError(
                    f"label table '{table}': merge.{target} names unknown class '{member}'; known: {list(by_name)}"
                )
            if member in claimed:
                raise SegkitError(
                    f"label table '{table}': class '{member}' is merged into both '{claimed[member]}' and '{target}'"
                )
            claimed[member] = str(target)
        ordered = sorted(members, key=lambda m: (bool(by_name[m].get("ignored")), entries.index(by_name[m])))
        color = spec.get("color") if isinstance(spec, Mapping) else None
        new[str(target)] = {
            "name": str(target),
            "color": _as_color(table, color) if color else by_name[ordered[0]]["color"],
            "ids": tuple(i for e in entries if e["name"] in members for i in e["ids"]),
            "source_colors": tuple(c for e in entries if e["name"] in members for c in e["source_colors"]),
            "first": ordered[0] if not by_name[ordered[0]].get("ignored") else None,
        }
    out = []
    for e in entries:
        if e["name"] not in claimed:
            out.append(e)
        elif new[claimed[e["name"]]]["first"] == e["name"]:
            out.append(new[claimed[e["name"]]])
    last = [v for v in new.values() if v["first"] is None]
    trained = [e for e in out if not e.get("ignored")] + last
    return [{k: v for k, v in e.items() if k != "first"} for e in trained + [e for e in out if e.get("ignored")]]


def _as_color(table: str, value) -> Color:
    """``[r, g, b]`` of whole numbers 0-255 (YAML lists; tuples from Python), refused in one line otherwise."""
    ok = isinstance(value, (list, tuple)) and len(value) == 3
    if not ok or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value):
        raise SegkitError(f"label table '{table}': colour {value!r} must be [r, g, b] of whole numbers 0-255")
    return int(value[0]), int(value[1]), int(value[2])


def _color_code(color: Sequence[int]) -> int:
    return (int(color[0]) << 16) | (int(color[1]) << 8) | int(color[2])


def _code_color(code: int) -> Color:
    return (int(code) >> 16) & 255, (int(code) >> 8) & 255, int(code) & 255
