"""Kill a real command mid-run, as a user's Ctrl-\\ or an OOM killer would: shared by the
kill-and-resume tests."""

import json
import os
import signal
import subprocess
import time


def recorded_stages(convert_dir) -> set[str]:
    """The conversion stages ``stages.json`` in ``convert_dir`` records as whole."""
    try:
        return set(json.loads((convert_dir / "stages.json").read_text())["stages"])
    except (OSError, ValueError):
        return set()


def kill_once_recorded(command: list[str], convert_dir, stage: str, **popen) -> None:
    """Run ``command`` and SIGKILL it (with every process it started) once ``stage`` is recorded."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        while process.poll() is None and stage not in recorded_stages(convert_dir):
            time.sleep(0.05)
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
