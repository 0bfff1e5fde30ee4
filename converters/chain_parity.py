"""The checking steps of a conversion: every artifact against PyTorch, gated, and what explains a failure.

``ParitySteps`` is mixed into ``chain.Chain`` (whose fields it reads: the config, the built
artifacts, their delegation, the step cache): ``check_parity`` measures every stage on the parity
images (or keeps ``parity.json`` when nothing changed), applies the gates, ranks full int8's ops
by SQNR against a float32 file of the same graph (``int8_sensitivity``), locates a broken float
stage (``divergence``) and adds MediaPipe's row under every file (``client_rows``, gated after
the divergence search).
"""

from __future__ import annotations

import json
import time

import numpy as np

from seg2tflite.atomic import atomic_write_text, private_tempdir
from seg2tflite.converters.app_client import CLIENT_NOTES, client_figures, client_gate_failures
from seg2tflite.converters.app_io import to_pixels
from seg2tflite.converters.divergence import explain_float16_failure, explain_float_failure
from seg2tflite.converters.images import ParityImages
from seg2tflite.converters.int8_sensitivity import SENSITIVITY_FILE, model_explorer_node_data, op_sensitivity, sensitivity_lines
from seg2tflite.converters.isolated import VariantFailure, VariantWorker
from seg2tflite.converters.manifest import write_json
from seg2tflite.converters.parity import ParityReport, apply_gates, format_table, measure_parity
from seg2tflite.converters.resume import stage_key
from seg2tflite.converters.runtimes import OnnxRunner, SavedModelRunner, TFLiteRunner, TorchRunner
from seg2tflite.converters.stages import INTEGER_FORM, PARITY_FILE


class ParitySteps:
    """``Chain``'s parity step and the rows it adds; reads the chain's fields."""

    def check_parity(self, parity: ParityImages, sample: np.ndarray) -> ParityReport:
        """Every artifact against PyTorch (kept from parity.json when nothing changed), gated."""
        t = time.perf_counter()
        config = self.config
        built_files = {stage: self.cache.stages[stage]["files"] for stage in ("onnx", *self.saved_models, *self.built)}
        key = stage_key(
            built_files, parity.images.tobytes(), None if parity.masks is None else parity.masks.tobytes(),
            config.to_dict(), self.torch_model is not None,
        )  # fmt: skip
        if self.cache.fresh("parity", key):
            report = ParityReport.from_dict(json.loads(self.folder.parity_path.read_text()))
            self.log("parity: inputs unchanged since the last run, figures kept from parity.json")
            self.log(format_table(report, self.config))
            return report
        runners = {}
        if self.torch_model is not None:
            runners["pytorch"] = TorchRunner(self.torch_model)
        runners["onnx"] = OnnxRunner(self.artifacts["onnx"], config.num_threads)
        for stage in self.saved_models:
            runners[stage] = SavedModelRunner(self.artifacts[stage])
        builtin = {}  # a file XNNPACK took nothing of already ran on the builtin kernels alone
        for variant in self.built:
            runners[variant] = TFLiteRunner(self.artifacts[variant], config.num_threads, app=self.app)
            if self.delegation[variant]["delegated"]:
                builtin[variant] = TFLiteRunner(self.artifacts[variant], config.num_threads, xnnpack=False, app=self.app)
        report = measure_parity(
            runners, parity.images, parity.masks, self.prepared.num_classes, image_names=parity.names,
            progress=self.progress, builtin=builtin, config=config,
        )  # fmt: skip
        report.delegation = dict(self.delegation)
        apply_gates(report, config)
        if {"float32", "full_int8"} <= set(self.built):
            report.int8_sensitivity = self.int8_sensitivity(parity)
        self.seconds["parity"] = time.perf_counter() - t
        if config.locate_divergence:
            t = time.perf_counter()
            found = explain_float_failure(
                report, self.prepared.model, sample[:1], self.deploy_model, config, self.log, parity.images
            )
            if "float16" in runners and runners["float16"].output_form != "classes":  # a class map has no drift
                half = explain_float16_failure(report, self.prepared.model, runners["float16"], parity.images, config)
                if found and half:
                    found = {
                        **found,
                        "summary": f"{found['summary']}. And {half['summary']}",
                        "float16_weights": half["float16_weights"],
                    }
                found = found or half
            report.divergence = found
            if report.divergence is not None:
                self.seconds["divergence"] = time.perf_counter() - t
        t = time.perf_counter()
        report.client = self.client_rows(parity, runners[report.reference])
        for variant, row in report.client.items():  # after the divergence search: a client's fault is not the converter's
            lines = client_gate_failures(variant, row, report.pytorch_miou, config)
            if lines:
                report.stages[variant].failures += lines
                report.stages[variant].gate = "fail"
        self.seconds["mediapipe"] = time.perf_counter() - t
        write_json(self.folder.parity_path, report.to_dict())
        self.cache.record("parity", key, [PARITY_FILE, *([SENSITIVITY_FILE] if report.int8_sensitivity else [])])
        self.log(format_table(report, self.config))
        return report

    def int8_sensitivity(self, parity: ParityImages) -> list[dict]:
        """Full int8's ops by SQNR against float32 on the parity images (worst logged), and the same
        as Model Explorer node data beside the file."""
        app = self.app
        pixels = to_pixels(parity.images, app.mean, app.std).transpose(0, 2, 3, 1) if app.input == "uint8" else None
        float32 = self.sensitivity_reference()
        if float32 is None:
            return []
        rows = op_sensitivity(float32, self.artifacts["full_int8"].read_bytes(), parity.images, pixels)
        if rows:
            atomic_write_text(self.folder.path / SENSITIVITY_FILE, json.dumps(model_explorer_node_data(rows), indent=1) + "\n")
            self.log(f"full_int8: lowest SQNR against float32 ({SENSITIVITY_FILE}): {'; '.join(sensitivity_lines(rows, 3))}")
        return rows

    def sensitivity_reference(self) -> bytes | None:
        """The float32 file full int8's ops are scored against: one of the same graph, so that its
        tensors have the same names (built from the integer form when there is one; None when that
        build fails)."""
        if INTEGER_FORM not in self.artifacts:
            return self.artifacts["float32"].read_bytes()
        app = None if self.app.default else self.app.to_dict()
        with private_tempdir("reference") as work, VariantWorker(work, False) as worker:
            built = worker.build(self.artifacts[INTEGER_FORM], "float32", self.config.int8_io, app)
        return None if isinstance(built, VariantFailure) else built.content

    def client_rows(self, parity: ParityImages, reference) -> dict:
        """MediaPipe's ImageSegmenter on every built file and the parity images' pixels (one child
        process: a native crash loses the rows, not the conversion)."""
        app, k = self.app, self.prepared.num_classes
        pixels = to_pixels(parity.images, app.mean, app.std).transpose(0, 2, 3, 1)
        ref = np.concatenate([reference(x[None]).argmax(1) for x in parity.images])
        rows = {}
        with private_tempdir("client") as work, VariantWorker(work, False) as worker:
            for variant in self.built:
                litert_runner = TFLiteRunner(self.artifacts[variant], self.config.num_threads, app=app)
                litert = np.concatenate([litert_runner(x[None]).argmax(1) for x in parity.images])
                out = worker.client(self.artifacts[variant], variant, pixels)
                if isinstance(out, VariantFailure):
                    rows[variant] = {"client": "mediapipe ImageSegmenter (CPU)", "refused": out.line()}
                    continue
                masks, labels = out
                rows[variant] = {**client_figures(masks, ref, litert, parity.masks, k), "labels": labels}
                if app.output != "logits":
                    rows[variant]["note"] = CLIENT_NOTES[app.output]
        return rows
