"""`seg2tflite profile`: where the time of every .tflite of a demo run goes, op by op.

For each model of a run folder (``DIR/demo.json``'s and any other with a conversion folder, or
those named), every ``.tflite`` in ``DIR/models/M/convert/`` is profiled by ``profile_artifact``
(each op cut out and timed alone, one fresh process per file, so a native crash fails that
file's profile only and is recorded as a failure) and the figures are merged into
``DIR/profile.json``: re-profiling some models keeps the others'. ``seg2tflite report`` renders it as ``report/profile.md`` (``render_profile_md``).

int16x8 is not profiled (``SKIPPED`` says why, and the report repeats it): ``profile_artifact``
calls the whole file and then every op 18 times, and LiteRT runs int16x8 on its reference kernels
(SegNet's whole file takes 1.3 s a call in the demo's run).
"""

from __future__ import annotations

import json
from pathlib import Path

from seg2tflite.atomic import atomic_write_text
from seg2tflite.converters.stages import STAGES
from seg2tflite.errors import UserError, setting
from seg2tflite.eval.profile import Profile, profile_artifact
from seg2tflite.eval.record import run_versions
from seg2tflite.eval.run_dir import RunDir

PROFILE_FILE = "profile.json"
TFLITE_STAGES = tuple(k for k, s in STAGES.items() if s.runtime == "litert")
SKIPPED = {
    "int16x8": "LiteRT runs it on its reference kernels (XNNPACK takes no int16), tens of times slower than "
    "full int8, and every op would be called 18 times; its whole-file latency is in results.md",
}
SLOWEST = 5  # single ops kept per file


def load_profiles(run: Path) -> dict:
    """``DIR/profile.json`` ({"models": {}} when there is none); an unreadable one is a UserError."""
    path = run / PROFILE_FILE
    if not path.is_file():
        return {"models": {}}
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("models"), dict):
            raise ValueError("no models object")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: unreadable profile record ({e}); delete it and run `seg2tflite profile` again") from None
    return record


def profile_entry(profile: Profile) -> dict:
    """What ``profile.json`` keeps of one file's profile."""
    return {
        "whole_ms": round(profile.whole_ms, 4),
        "sum_ms": round(profile.sum_ms, 4),
        "ops": len(profile.ops) + len(profile.untimed),
        "delegated": sum(t.delegated for t in profile.ops),  # XNNPACK took it when loaded alone
        "untimed": profile.untimed,
        "by_type": [
            {"op": r["op"], "dtype": r["dtype"], "xnnpack": r["delegated"], "count": r["count"], "ms": round(r["ms"], 4)}
            for r in profile.by_type()
        ],
        "slowest": [
            {"index": t.index, "op": t.op, "dtype": t.dtype, "xnnpack": t.delegated, "ms": round(t.median_ms, 4)}
            for t in sorted(profile.ops, key=lambda t: -t.median_ms)[:SLOWEST]
        ],
    }


def run_profile(run: str | Path, models: tuple[str, ...] = (), threads: int = 2, progress: bool = True) -> Path:
    """Profile every .tflite of the run's (or the named) models; return the JSON file written."""
    from tqdm.auto import tqdm

    run = Path(run)
    present = RunDir(run).model_names()
    if not present:
        raise UserError(
            f"{run}: no demo.json and no models/M/convert/ folder; give {setting('run')} a `seg2tflite demo` run folder"
        )
    unknown = [m for m in models if m not in present]
    if unknown:
        raise UserError(f"{setting('models')} {' '.join(unknown)}: not in this run; choose from {', '.join(present)}")
    record = load_profiles(run)  # refused before anything is timed
    chosen = list(dict.fromkeys(models)) or present
    files = [(m, s, RunDir(run).conversion(m).artifact(s)) for m in chosen for s in TFLITE_STAGES]
    files = [(m, s, path) for m, s, path in files if path.is_file()]
    versions = run_versions()
    profiles = {m: {"threads": threads, "versions": versions, "variants": {}} for m in chosen}
    with tqdm(files, desc="profile", unit="file", disable=not progress) as bar:
        for model, stage, path in bar:
            bar.set_postfix_str(f"{model} {stage}")
            entry = {"file": path.relative_to(run).as_posix()}
            if stage in SKIPPED:
                entry["skipped"] = SKIPPED[stage]
            else:
                try:
                    entry.update(profile_entry(profile_artifact(path, threads=threads)))
                except UserError as e:  # the child crashed or refused the file: this file's profile only
                    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                    entry["failed"] = "; ".join(lines).removeprefix(f"{path}: ")  # "file" names it
                    bar.write(f"{model} {stage}: profile failed: {entry['failed']}")
            profiles[model]["variants"][stage] = entry
    record["models"].update(profiles)
    path = run / PROFILE_FILE
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
