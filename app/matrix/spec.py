"""The matrix file: entries (models x variants x data) with their budgets, read from TOML and validated.

A matrix file holds a ``[defaults]`` table and one ``[[entry]]`` table per model; an entry's
keys override the defaults (tables such as ``max_miou_drop`` merge key by key). Each entry names
exactly one source: ``model`` (a registered name, ``checkpoint`` optional), ``module``
(``FILE.py:FUNCTION``, ``weights`` optional), ``hf`` (a Hugging Face checkpoint folder) or
``onnx`` (a file). Relative paths, data spec paths included, are relative to the matrix file.
Every refusal is one line naming the file, the entry and the key; reading imports no PyTorch or TF.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as tomli, which pytest brings there
    import tomli as tomllib  # type: ignore[no-redef]

from seg2tflite.converters.config import ConvertConfig
from seg2tflite.errors import UserError

SOURCES = ("model", "module", "hf", "onnx")
GATES = (  # ConvertConfig's float gates, settable per entry under [gates]
    "float_min_agreement",
    "float_outlier_drift",
    "float16_min_agreement",
    "float16_outlier_drift",
    "float16_tie_margin",
    "max_outlier_share",
    "client_min_agreement",
)
# Every other ConvertConfig setting goes under [convert]; these the entry sets with keys of its own.
ENTRY_SETTINGS = ("input_size", "variants", "calib_split", "calib_min", "trained", "max_miou_drop")
CONVERT_KEYS = tuple(f.name for f in fields(ConvertConfig) if f.name not in (*ENTRY_SETTINGS, *GATES))
DEFAULT_VARIANTS = ("float32", "float16", "dynamic_int8", "full_int8")
LATENCY_BASELINE = "float32"  # max_latency_ratio: a variant's median time over this variant's
SPLITS = ("train", "val", "test")

SETTINGS = {
    "input_size": "[H, W]",
    "variants": "list of TFLite variants",
    "calib": "data spec of the calibration (and parity) images",
    "calib_split": "split the calibration images come from",
    "parity_split": "split the conversion's parity images come from",
    "eval": "data spec the cells are evaluated on",
    "eval_split": "split evaluated",
    "eval_limit": "evaluate only the first N images",
    "num_classes": "head size",
    "mean": "[r, g, b] normalisation",
    "std": "[r, g, b] normalisation",
    "trained": "gate mIoU (default: true unless weights are a random init)",
    "seed": "random init seed (a registered model without checkpoint)",
    "max_miou_drop": "mIoU points a variant may lose (a number, or a table per variant)",
    "max_latency_ratio": "table per variant: median time / float32's median time",
    "gates": "table of ConvertConfig float gates",
    "convert": "table of other ConvertConfig settings",
}
ENTRY_ONLY = ("name", *SOURCES, "checkpoint", "weights")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Entry:
    """One model of the matrix, every setting resolved (paths absolute)."""

    name: str  # unique; the folder under OUT/entries/ and the test id
    kind: str  # one of SOURCES
    source: str  # registered name, /abs/FILE.py:FUNCTION, HF folder or ONNX file
    weights: str | None  # checkpoint (model) or safetensors (module)
    input_size: tuple[int, int]
    variants: tuple[str, ...]
    calib: str
    eval: str
    calib_split: str = "train"
    parity_split: str = "val"
    eval_split: str = "test"
    eval_limit: int | None = None
    num_classes: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    trained: bool = True
    seed: int = 0
    max_miou_drop: dict = field(default_factory=dict)  # variant -> mIoU points
    max_latency_ratio: dict = field(default_factory=dict)  # variant -> ratio to float32's median
    gates: dict = field(default_factory=dict)  # GATES -> value
    convert: dict = field(default_factory=dict)  # CONVERT_KEYS -> value

    @property
    def cells(self) -> list[tuple[str, str]]:
        return [(self.name, v) for v in self.variants]

    def convert_config(self):
        """The ConvertConfig this entry converts with: its gates and settings, and the loosest of
        its variants' mIoU budgets (each variant's own budget is applied to its cell after)."""

        budget = max(self.max_miou_drop.values()) if self.max_miou_drop else ConvertConfig.max_miou_drop
        return ConvertConfig(
            input_size=self.input_size,
            variants=self.variants,
            calib_split=self.calib_split,
            trained=self.trained,
            max_miou_drop=budget,
            **self.gates,
            **self.convert,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Entry:
        data = dict(data)
        for key in ("input_size", "variants", "mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class Matrix:
    path: str  # the matrix file
    entries: tuple[Entry, ...]

    @property
    def cells(self) -> list[tuple[str, str]]:
        return [cell for entry in self.entries for cell in entry.cells]


def load_matrix(path: str | Path) -> Matrix:
    """Read and validate a matrix file; a ``UserError`` of one line naming what to fix otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such matrix file; give the path of a .toml matrix file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e}); give a readable TOML file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    return matrix_from_dict(data, path)


def matrix_from_dict(data: dict, path: str | Path = "matrix", python: bool = False) -> Matrix:
    """Validate the parsed TOML (or an equal dict); relative paths resolve against ``path``'s folder.
    ``python``: entries may say ``python = true``, their model an in-memory module given to the run."""
    path = Path(path)
    base = path.parent.resolve()
    unknown = sorted(set(data) - {"defaults", "entry"})
    if unknown:
        raise UserError(f"{path}: unknown top-level key {unknown[0]!r}; a matrix holds [defaults] and [[entry]] tables")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UserError(f"{path}: defaults must be a table ([defaults])")
    _check_keys(defaults, set(SETTINGS), f"{path}: [defaults]")
    entries = data.get("entry")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: no entries; add at least one [[entry]] table naming a model, module, hf folder or onnx file")
    resolved = [_entry(raw, defaults, base, f"{path}: entry {i + 1}", python) for i, raw in enumerate(entries)]
    names = [e.name for e in resolved]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{path}: entry name {repeated[0]!r} used twice; give every entry its own name")
    return Matrix(str(path), tuple(resolved))


def _check_keys(table: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; use {', '.join(sorted(allowed))}")


def _merge(defaults: dict, entry: dict) -> dict:
    merged = {**defaults, **entry}
    for key in ("gates", "convert", "max_latency_ratio", "max_miou_drop"):
        d, e = defaults.get(key), entry.get(key)
        if isinstance(d, dict) and isinstance(e, dict):
            merged[key] = {**d, **e}
    return merged


def _entry(raw: dict, defaults: dict, base: Path, where: str, python: bool = False) -> Entry:
    from seg2tflite.converters.stages import VARIANTS

    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"{where}: name {name!r} is missing or not a plain name; use letters, digits, '_', '-' or '.'")
    where = f"{where.rsplit(': entry', 1)[0]}: entry {name!r}"
    _check_keys(raw, set(SETTINGS) | set(ENTRY_ONLY) | ({"python"} if python else set()), where)
    sources = [k for k in (*SOURCES, "python") if k in raw]
    if len(sources) != 1:
        raise UserError(f"{where}: name exactly one source ({', '.join(SOURCES)}); it names {', '.join(sources) or 'none'}")
    kind = sources[0]
    if "checkpoint" in raw and kind != "model":
        raise UserError(f"{where}: checkpoint applies to a registered model; give a module its weights with weights = FILE")
    if "weights" in raw and kind != "module":
        raise UserError(f"{where}: weights applies to a module; give a registered model its weights with checkpoint = FILE")
    s = _merge(defaults, raw)

    source = "<in-memory module>" if kind == "python" else _text(raw[kind], f"{where}: {kind}")
    if kind == "model":
        from seg2tflite.models import list_models

        if source not in list_models():
            raise UserError(f"{where}: model {source!r} is not registered; choose one of {', '.join(list_models())}")
    elif kind == "python":
        pass
    elif kind == "module":
        file, sep, function = source.rpartition(":")
        if not sep or not file or not function.isidentifier():
            raise UserError(f'{where}: module {source!r}: expected FILE.py:FUNCTION, e.g. module = "my_net.py:build"')
        source = f"{_path(file, base, f'{where}: module', 'file')}:{function}"
    else:
        source = _path(source, base, f"{where}: {kind}", "folder" if kind == "hf" else "file")
    weights = raw.get("checkpoint", raw.get("weights"))
    if weights is not None:
        key = "checkpoint" if kind == "model" else "weights"
        weights = _path(_text(weights, f"{where}: {key}"), base, f"{where}: {key}", "any")

    if "input_size" not in s and kind != "model":
        raise UserError(f"{where}: a {kind} entry has no registered size; set input_size = [H, W] (here or in [defaults])")
    if "input_size" in s:
        input_size = _size(s["input_size"], f"{where}: input_size")
    else:
        from seg2tflite.models import get_model_config

        input_size = tuple(get_model_config(source).input_size)
    variants = s.get("variants", list(DEFAULT_VARIANTS))
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
        raise UserError(f"{where}: variants must be a list of names from {', '.join(VARIANTS)}")
    bad = [v for v in variants if v not in VARIANTS]
    if bad or len(set(variants)) != len(variants):
        what = f"{bad[0]!r} is not a variant" if bad else "a variant is named twice"
        raise UserError(f"{where}: variants: {what}; choose each once from {', '.join(VARIANTS)}")
    variants = tuple(v for v in VARIANTS if v in variants)

    for key in ("calib", "eval"):
        if key not in s:
            raise UserError(
                f'{where}: no {key} data; set {key} = "folder:PATH" (or synthetic, ade20k:PATH...) here or in [defaults]'
            )
    calib = _data(s["calib"], base, f"{where}: calib")
    evaluate = _data(s["eval"], base, f"{where}: eval")
    splits = {k: s.get(k, d) for k, d in (("calib_split", "train"), ("parity_split", "val"), ("eval_split", "test"))}
    for key, value in splits.items():
        if value not in SPLITS:
            raise UserError(f"{where}: {key} {value!r} is not a split; use train, val or test")
    eval_limit = s.get("eval_limit")
    if eval_limit is not None and not (_is_int(eval_limit) and eval_limit >= 1):
        raise UserError(f"{where}: eval_limit {eval_limit!r} must be a whole number of images >= 1")
    num_classes = s.get("num_classes")
    if num_classes is not None and not (_is_int(num_classes) and num_classes >= 1):
        raise UserError(f"{where}: num_classes {num_classes!r} must be a whole number >= 1")
    mean = _triple(s.get("mean"), f"{where}: mean", positive=False)
    std = _triple(s.get("std"), f"{where}: std", positive=True)
    trained = s.get("trained", not (kind in ("model", "module", "python") and weights is None))
    if not isinstance(trained, bool):
        raise UserError(f"{where}: trained must be true or false")
    seed = s.get("seed", 0)
    if not (_is_int(seed) and seed >= 0):
        raise UserError(f"{where}: seed {seed!r} must be a whole number >= 0")

    budgets = _budgets(s.get("max_miou_drop"), variants, where)
    ratios = s.get("max_latency_ratio", {})
    if not isinstance(ratios, dict):
        raise UserError(
            f"{where}: max_latency_ratio must be a table of variant = ratio, e.g. max_latency_ratio = {{ full_int8 = 1.5 }}"
        )
    for variant, ratio in ratios.items():
        if variant not in variants:
            raise UserError(
                f"{where}: max_latency_ratio names {variant!r}, not among the entry's variants ({', '.join(variants)})"
            )
        if not (_is_number(ratio) and ratio > 0):
            raise UserError(f"{where}: max_latency_ratio {variant} = {ratio!r} must be a positive number")
    ratios = {v: float(ratios[v]) for v in variants if v in ratios}
    if ratios and LATENCY_BASELINE not in variants:
        raise UserError(
            f"{where}: max_latency_ratio is a ratio to {LATENCY_BASELINE}'s time; add {LATENCY_BASELINE} to the variants"
        )
    gates = _table(s.get("gates", {}), GATES, f"{where}: gates")
    convert = _table(s.get("convert", {}), CONVERT_KEYS, f"{where}: convert")

    entry = Entry(
        name=name, kind=kind, source=source, weights=weights, input_size=input_size, variants=variants, calib=calib,
        eval=evaluate, eval_limit=eval_limit, num_classes=num_classes, mean=mean, std=std, trained=trained, seed=seed,
        max_miou_drop=budgets, max_latency_ratio=ratios, gates=gates, convert=convert, **splits,
    )  # fmt: skip
    try:
        entry.convert_config()  # ConvertConfig's own checks (sizes, gate fractions, calib_size...)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except TypeError as e:
        raise UserError(f"{where}: a [gates] or [convert] value has the wrong type ({e})") from None
    return entry


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def _path(value: str, base: Path, where: str, kind: str) -> str:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    ok = path.is_dir() if kind == "folder" else path.is_file() if kind == "file" else path.exists()
    if not ok:
        what = {"folder": "a folder", "file": "a file"}.get(kind, "there")
        raise UserError(f"{where}: {value} is not {what} (paths are relative to the matrix file's folder, {base})")
    return str(path.resolve())


def _data(value, base: Path, where: str) -> str:
    """A data spec with its path made absolute (workers on other nodes run from other folders)."""
    from seg2tflite.data.spec import KINDS, parse_synthetic_spec

    value = _text(value, where)
    kind, sep, rest = value.partition(":")
    if kind not in KINDS:
        raise UserError(
            f"{where}: {value!r} is not a data spec; use synthetic[:options] or KIND:PATH with KIND one of {', '.join(KINDS[1:])}"
        )
    if kind == "synthetic":
        parse_synthetic_spec(value, option=where.rsplit(": ", 1)[-1])
        return value
    if not rest:
        raise UserError(f"{where}: {value!r} names no folder; use {kind}:PATH")
    return f"{kind}:{_path(rest, base, where, 'folder')}"


def _size(value, where: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 8 for v in value)):
        raise UserError(f"{where}: {value!r} is not [H, W] with both sizes >= 8")
    return int(value[0]), int(value[1])


def _triple(value, where: str, positive: bool):
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)):
        raise UserError(f"{where}: {value!r} is not three numbers [r, g, b]")
    if positive and not all(v > 0 for v in value):
        raise UserError(f"{where}: {value!r}: every std must be > 0")
    return tuple(float(v) for v in value)


def _budgets(value, variants: tuple[str, ...], where: str) -> dict:

    default = ConvertConfig.max_miou_drop
    if value is None:
        return {v: default for v in variants}
    if _is_number(value):
        value = {v: value for v in variants}
    if not isinstance(value, dict):
        raise UserError(f"{where}: max_miou_drop must be a number or a table of variant = points, e.g. {{ full_int8 = 1.0 }}")
    from seg2tflite.converters.stages import VARIANTS

    for variant, points in value.items():
        if variant not in VARIANTS:
            raise UserError(f"{where}: max_miou_drop names {variant!r}, not a variant; use {', '.join(VARIANTS)}")
        if not (_is_number(points) and math.isfinite(points) and points >= 0):
            raise UserError(f"{where}: max_miou_drop {variant} = {points!r} must be a finite number of mIoU points >= 0")
    return {v: float(value.get(v, default)) for v in variants}


def _table(value, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where}: must be a table of key = value")
    _check_keys(value, set(allowed), where)
    return dict(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
