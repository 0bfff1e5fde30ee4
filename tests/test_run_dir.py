"""RunDir: the one home of a run folder's layout, and of what may be read from its demo.json."""

import json

import pytest

from seg2tflite.errors import UserError
from seg2tflite.eval.run_dir import RunDir, mark_measured, measured_is_current


def test_the_layout(tmp_path):
    run = RunDir(tmp_path)
    assert run.summary_path == tmp_path / "demo.json"
    assert run.checkpoint("segnet_vgg16") == tmp_path / "models" / "segnet_vgg16" / "train" / "best.safetensors"
    assert (
        run.conversion("segnet_vgg16").artifact("float32")
        == tmp_path / "models" / "segnet_vgg16" / "convert" / "model_float32.tflite"
    )
    assert run.compress_dir("segnet_vgg16", "prune50") == tmp_path / "models" / "segnet_vgg16" / "compress" / "prune50"
    assert run.deploy_dir("segnet_vgg16") == tmp_path / "deploy" / "segnet_vgg16"


def test_model_names_are_the_summarys_then_the_converted_ones(tmp_path):
    (tmp_path / "models" / "unet_mediatek" / "convert").mkdir(parents=True)
    (tmp_path / "models" / "attendseg" / "convert").mkdir(parents=True)
    (tmp_path / "demo.json").write_text(json.dumps({"config": {"models": ["segformer_b0", "attendseg"]}}))
    assert RunDir(tmp_path).model_names() == ["segformer_b0", "attendseg", "unet_mediatek"]


@pytest.mark.parametrize("models", [["../../etc"], ["/tmp/x"], [7], "segnet_vgg16"])
def test_a_summary_naming_a_folder_outside_the_run_is_refused(tmp_path, models):
    (tmp_path / "demo.json").write_text(json.dumps({"config": {"models": models}}))
    with pytest.raises(UserError, match="demo.json"):
        RunDir(tmp_path).model_names()


def test_an_unreadable_summary_is_one_user_error(tmp_path):
    (tmp_path / "demo.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable demo record"):
        RunDir(tmp_path).summary()


def test_rows_are_current_only_for_the_files_they_were_measured_on(tmp_path):
    convert, marker = tmp_path / "convert", tmp_path / "measured.json"
    convert.mkdir()
    (convert / "stages.json").write_text('{"full_int8": "sha of the first file"}')
    assert not measured_is_current(marker, convert)  # never measured
    mark_measured(marker, convert, ["pytorch", "full_int8"])
    assert measured_is_current(marker, convert)
    (convert / "stages.json").write_text('{"full_int8": "sha of a file built again"}')
    assert not measured_is_current(marker, convert)
    marker.write_text("[not a marker")
    assert not measured_is_current(marker, convert)
