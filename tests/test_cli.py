"""The command line: help for every subcommand, and one clear line for bad input."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seg2tflite.app.cli import build_parser, main


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_lists_every_subcommand():
    installed_script = Path(sys.executable).parent / "seg2tflite"
    result = subprocess.run([str(installed_script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in _subcommands():
        assert name in result.stdout


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help_with_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: seg2tflite" in text
    if "--seed" in text:
        assert "(default:" in text
    assert "(default: None)" not in text
    flat = " ".join(text.split())  # argparse wraps help lines
    assert not re.search(r"default: [^()]*\) \(default:", flat), "an option's help names its default twice"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_unknown_model_is_one_clear_line(capsys, tmp_path):
    assert main(["train", "--model", "nope", "--out", str(tmp_path)]) == 2
    assert "--model nope" in _error_line(capsys)


def test_missing_dataset_is_one_clear_line(capsys, tmp_path):
    missing = tmp_path / "nothing-here"
    code = main(["train", "--model", "segformer_b0", "--data", f"folder:{missing}", "--out", str(tmp_path / "o")])
    assert code == 2
    assert str(missing) in _error_line(capsys)
    assert not (tmp_path / "o" / "last.safetensors").exists()


def test_unknown_data_kind_names_the_valid_ones(capsys, tmp_path):
    assert main(["data", "check", "--data", "imagenet:/x"]) == 2
    line = _error_line(capsys)
    assert "imagenet" in line and "synthetic" in line


def test_data_synthetic_writes_the_folder_layout(tmp_path, capsys):
    out = tmp_path / "data"
    args = [
        "data",
        "synthetic",
        "--out",
        str(out),
        "--num-train",
        "3",
        "--num-val",
        "2",
        "--num-test",
        "2",
        "--image-size",
        "32",
        "48",
    ]
    assert main(args) == 0
    assert len(list((out / "train" / "images").glob("*.png"))) == 3
    assert len(list((out / "val" / "masks").glob("*.png"))) == 2
    assert main(["data", "check", "--data", f"folder:{out}", "--split", "test"]) == 0
    assert "2 items" in capsys.readouterr().out


def test_debug_flag_shows_the_traceback(capsys, tmp_path):
    assert main(["--debug", "data", "check", "--data", "imagenet:/x"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_module_entry_point_runs_beside_the_users_own_models_and_eval(tmp_path):
    """A working folder with its own models.py, eval.py, converters/ and calibration.py shadows
    nothing: the package installs one top-level name, and the command prints no library noise."""
    for name in ("models.py", "eval.py", "calibration.py"):
        (tmp_path / name).write_text("raise ImportError('the user module was imported')\n")
    (tmp_path / "converters").mkdir()
    (tmp_path / "converters" / "__init__.py").write_text("raise ImportError('the user package was imported')\n")
    result = subprocess.run([sys.executable, "-m", "seg2tflite.app", "models"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "segformer_b0" in result.stdout
    assert result.stderr == ""


def test_report_command_rebuilds_from_its_run_folder(capsys, tmp_path):
    """``--run`` is an option of ``report``; it must not shadow the command's own handler."""
    code = main(["report", "--run", str(tmp_path)])
    assert code == 2 and "record.json" in _error_line(capsys)


@pytest.mark.chain
def test_tensorflow_start_up_lines_are_silenced_unless_verbose():
    """The first ``import tensorflow`` prints absl/XLA lines to fd 2; quiet_libraries() mutes them,
    and SEG2TFLITE_VERBOSE (``--verbose``) lets them through."""
    code = "from seg2tflite.quiet import quiet_libraries; quiet_libraries(); import tensorflow; print('imported')"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SEG2TFLITE_VERBOSE")}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "SEG2TFLITE_VERBOSE": "1"})
    assert quiet.returncode == loud.returncode == 0 and "imported" in quiet.stdout
    assert quiet.stderr == "", quiet.stderr
    assert loud.stderr.strip(), "TensorFlow printed nothing even when verbose: this check would prove nothing"
