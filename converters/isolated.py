"""Build and first load every TFLite variant in a child process, so a native crash fails only that variant.

The TFLite converter and LiteRT's kernels are C++: on some graphs they abort the whole process
(SIGABRT from a failed check) or segfault instead of raising, e.g. LiteRT's builtin kernels on
the full-int8 file of a ResNet stem's padded max pool. So a spawned worker process builds each
variant (``tflite_variants.build_tflite``), then opens it as the chain will (``TFLiteRunner``:
XNNPACK, else the builtin kernels), allocates its tensors and runs it once on zeros. It says
which step it starts before taking it; when it dies, the parent knows the step, the signal and
the last line the native code printed, reports that variant as failed (``VariantFailure``),
keeps the others and starts a fresh worker for the next one. A file LiteRT refuses to load or
allocate (e.g. an int16x8 PADV2 with a float constant) is a failure of its variant the same way.
A Python error of the converter (an op outside the builtins) is raised in the parent as before.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from seg2tflite.converters.parity import ParityError
from seg2tflite.errors import UserError, command_line_flags, command_line_wording
from seg2tflite.quiet import VERBOSE_VARIABLE, verbose

NATIVE_LOG = "native.log"
STEPS = ("starting", "converting", "loading", "running once", "mediapipe")


class VariantError(ParityError):
    """A TFLite variant could not be built or loaded (the others were kept, the manifest says which)."""

    exit_code = 3


@dataclass(frozen=True)
class VariantFailure:
    variant: str
    step: str  # one of STEPS: where it died
    reason: str  # "killed by SIGABRT", or the runtime's error
    detail: str = ""  # the last line the native code printed before dying, if any

    def line(self) -> str:
        where = {"converting": "the TFLite converter", "loading": "LiteRT, loading and allocating it"}.get(
            self.step,
            {"running once": "LiteRT, running it once", "mediapipe": "MediaPipe's ImageSegmenter"}.get(
                self.step, "the worker starting"
            ),
        )
        detail = f" (last native output: {self.detail})" if self.detail else ""
        return f"{self.variant}: {where} failed: {self.reason}{detail}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VariantBuild:
    content: bytes
    quantization: dict  # TFLiteRunner.io_quantization
    delegate: str  # TFLiteRunner.delegate
    int8_ranges: dict | None = None  # full int8: how its activation ranges were chosen (int8_build.Int8Build.record)


def failure_message(failures: dict[str, VariantFailure], asked: int, manifest: Path, report=None) -> str:
    """The one line a conversion with failed variants ends on (plus the broken gates, if any)."""
    lines = [failure.line() for failure in failures.values()]
    message = (
        f"{len(lines)} of {asked} TFLite variants failed and were not kept: {'; '.join(lines)}. "
        f"The others were built, checked and measured; {manifest} lists the failures"
    )
    if report is not None and report.failures:
        message += f"; parity gate broken too: {'; '.join(report.failures)}"
    return message


def _signal_name(code: int | None) -> str:
    if code is None:
        return "the worker vanished"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"the worker exited with status {code}"


class VariantWorker:
    """The parent's side: one worker process at a time, replaced after it dies."""

    def __init__(self, workdir: Path, progress: bool = False):
        self.workdir = Path(workdir)
        self.progress = progress
        self.process = None
        self.conn = None
        self.calib_file: Path | None = None
        self.calib_source = ""

    def __enter__(self) -> VariantWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_calibration(self, images: np.ndarray | None, source: str) -> None:
        if images is not None:
            self.calib_file = self.workdir / "calibration.npy"
            np.save(self.calib_file, np.ascontiguousarray(images, np.float32))
            self.calib_source = source

    def build(
        self,
        saved_model: Path,
        variant: str,
        int8_io: str,
        app: dict | None = None,
        metadata: dict | None = None,
        int8_ranges: str = "minmax",
        int8_bias_correction: bool = False,
    ) -> VariantBuild | VariantFailure:
        """``app``: ``AppIO.to_dict()`` (the app's input end); ``metadata``: ``ModelMetadata.to_dict()``,
        written into the file once it is built (None: none); ``int8_ranges``, ``int8_bias_correction``:
        how full int8 is quantized."""
        from seg2tflite.converters.stages import STAGES

        out = self.workdir / f"{variant}.tflite"
        calib = str(self.calib_file) if STAGES[variant].calibrated and self.calib_file else None
        job = {"saved_model": str(saved_model), "variant": variant, "int8_io": int8_io, "calib": calib, "out": str(out)}
        job.update(name=STAGES[variant].file, app=app, metadata=metadata, int8_ranges=int8_ranges)
        job.update(int8_bias_correction=int8_bias_correction)
        return self._run(variant, {**job, "source": self.calib_source, "progress": self.progress})

    def check(self, path: Path, variant: str, app: dict | None = None) -> VariantBuild | VariantFailure:
        """Load, allocate and run once a .tflite already on disk (one kept from an earlier run)."""
        return self._run(variant, {"variant": variant, "path": str(path), "app": app})

    def client(self, path: Path, variant: str, pixels: np.ndarray) -> tuple[np.ndarray, list[str]] | VariantFailure:
        """MediaPipe's category masks of ``pixels`` (N, H, W, 3) uint8 on the file at ``path`` and
        the labels it read (``app_client.category_masks``), run in the worker."""
        pixels_file = self.workdir / "client_pixels.npy"
        np.save(pixels_file, np.ascontiguousarray(pixels, np.uint8))
        return self._run(variant, {"variant": variant, "client": str(path), "pixels": str(pixels_file)})

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # the child inherits the ignore
        try:
            self.process = context.Process(
                target=_serve, args=(child, str(self.workdir), verbose(), command_line_flags()), daemon=True
            )
            with _main_script_not_rerun():
                self.process.start()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        child.close()
        self.conn = parent

    def _run(self, variant: str, job: dict) -> VariantBuild | VariantFailure:
        if self.process is None:
            self._start()
        log = self.workdir / NATIVE_LOG
        offset = log.stat().st_size if log.is_file() else 0
        step = "starting"
        self.conn.send(job)
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.process.join(timeout=30)
                code = self.process.exitcode
                self._forget_process()
                return VariantFailure(variant, step, _signal_name(code), _last_native_line(log, offset))
            kind = message[0]
            if kind == "step":  # what the native code prints from here on belongs to this step
                step = message[1]
                offset = log.stat().st_size if log.is_file() else 0
            elif kind == "built":
                _, path, quantization, delegate, int8_ranges = message
                return VariantBuild(Path(path).read_bytes(), quantization, delegate, int8_ranges)
            elif kind == "masks":
                _, masks_file, labels = message
                return np.load(masks_file), labels
            elif kind == "refused":  # LiteRT raised while loading, allocating or running it
                return VariantFailure(variant, message[1], message[2])
            else:  # "error": the converter's own exception, raised here as before
                _, error_type, text = message
                raise _error_type(error_type)(text)

    def _forget_process(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None

    def close(self) -> None:
        if self.process is not None:
            try:
                self.conn.send(None)
                self.process.join(timeout=10)
            except (OSError, ValueError):
                pass
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=10)
            self._forget_process()


@contextlib.contextmanager
def _main_script_not_rerun() -> Iterator[None]:
    """A spawned child runs the parent's ``__main__`` script again before its target, so a user's
    script that calls ``convert_model`` without an ``if __name__ == "__main__":`` guard would
    convert again in every worker. The worker needs nothing from that script: while it starts,
    ``__main__`` names no file (how ``multiprocessing.spawn`` treats an interactive session)."""
    main = sys.modules.get("__main__")
    saved = {key: main.__dict__[key] for key in ("__spec__", "__file__") if main is not None and key in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)


def _error_type(name: str) -> type[UserError]:
    from seg2tflite.converters.onnx_to_tf import ConversionError
    from seg2tflite.converters.ops import OpsError

    return {"OpsError": OpsError, "ConversionError": ConversionError}.get(name, UserError)


def _last_native_line(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# -- the worker's side -------------------------------------------------------------------------


def _serve(conn, workdir: str, loud: bool, flags: dict[str, str] | None = None) -> None:
    """The worker: jobs from ``conn`` until None or the pipe closes (its messages worded as the
    parent's: the command line's ``flags``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops this process
    terminal = sys.stderr
    if not loud:  # native output goes to the log the parent reads when this process dies
        saved = os.dup(2)
        fd = os.open(os.path.join(workdir, NATIVE_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
        terminal = open(saved, "w", buffering=1, closefd=False)  # progress bars still reach the user
    os.environ[VERBOSE_VARIABLE] = "1"  # nothing muted in here: a dying kernel's last words go to the log
    with command_line_wording(flags):
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            if job is None:
                return
            conn.send(_job(job, conn, terminal))


def _job(job: dict, conn, terminal) -> tuple:
    from seg2tflite.converters.app_io import AppIO
    from seg2tflite.converters.metadata import ModelMetadata, add_metadata
    from seg2tflite.converters.ops import OpsError, check_builtins_only, op_report
    from seg2tflite.converters.runtimes import TFLiteRunner

    if "client" in job:
        return _client_job(job, conn)
    step = "converting"
    int8_ranges = None
    try:
        if "path" in job:
            path = job["path"]
        else:
            conn.send(("step", step))
            from seg2tflite.converters.tflite_variants import build_variant

            calib = _calibration(job, terminal)
            app = AppIO(**job["app"]) if job.get("app") else None
            built = build_variant(
                job["saved_model"], job["variant"], calib, job["int8_io"], job["progress"], app=app,
                int8_ranges=job["int8_ranges"], int8_bias_correction=job["int8_bias_correction"],
            )  # fmt: skip
            content, int8_ranges = built
            check_builtins_only(op_report(content), job["name"])  # a Flex op is refused, not a load failure
            if job.get("metadata"):
                content = add_metadata(content, ModelMetadata(**job["metadata"]), app)
            path = job["out"]
            Path(path).write_bytes(content)
    except OpsError as e:
        return ("error", "OpsError", str(e))
    except UserError as e:
        return ("error", "UserError" if type(e) is UserError else "ConversionError", str(e))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it as the converter's error
        return ("error", "ConversionError", f"TFLite converter failed on the {job['variant']} variant: {e}")
    try:
        step = "loading"
        conn.send(("step", step))
        app = job.get("app")
        runner = TFLiteRunner(path, app=AppIO(**app) if app else None)
        step = "running once"
        conn.send(("step", step))
        shape = tuple(int(d) for d in runner.input["shape"])
        h, w = shape[1:3] if runner.nhwc else shape[2:4]
        runner(np.zeros((1, 3, h, w), np.float32))
    except Exception as e:  # noqa: BLE001 - LiteRT's RuntimeError/ValueError: this variant cannot run
        text = str(e).strip()
        return ("refused", step, text.splitlines()[0][:300] if text else type(e).__name__)
    return ("built", path, runner.io_quantization, runner.delegate, int8_ranges)


def _calibration(job: dict, terminal):
    if not job["calib"]:
        return None
    from tqdm import tqdm

    from seg2tflite.calibration.representative import CalibrationSet

    class _Calibration(CalibrationSet):
        def representative_dataset(self, progress: bool = False):
            images = self.nhwc()

            def gen():
                for x in tqdm(images, desc="calibrating", leave=False, disable=not progress, file=terminal):
                    yield [x[None]]

            return gen

    images = np.load(job["calib"])
    return _Calibration(images, tuple(f"{i}" for i in range(len(images))), tuple(range(len(images))), job["source"])


def _client_job(job: dict, conn) -> tuple:
    from seg2tflite.converters.app_client import category_masks

    conn.send(("step", "mediapipe"))
    try:
        masks, labels = category_masks(job["client"], np.load(job["pixels"]))
    except Exception as e:  # noqa: BLE001 - MediaPipe's refusal (its RuntimeError/ValueError) is the finding
        text = str(e).strip()
        return ("refused", "mediapipe", " ".join(line.strip() for line in text.splitlines())[:400] or type(e).__name__)
    out = str(Path(job["pixels"]).with_name("client_masks.npy"))
    np.save(out, masks)
    return ("masks", out, labels)
