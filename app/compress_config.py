"""Settings of ``seg2tflite compress``, apart from the job so ``--help`` stays light."""

from __future__ import annotations

from dataclasses import dataclass, replace

from seg2tflite.errors import UserError

METHODS = ("mixed", "prune", "cluster", "qat", "calibration")
DEFAULT_METHODS = ("mixed", "prune:0.5+mixed", "prune:0.8", "cluster:16+mixed", "cluster:32", "qat+mixed", "calibration")
STUDY_FILE = "calibration_study.json"


@dataclass(frozen=True)
class Method:
    kind: str  # one of METHODS
    value: float | None = None  # the sparsity of prune, the clusters of cluster
    then_mixed: bool = False  # prune/cluster/qat followed by mixed precision on the compressed model

    @classmethod
    def parse(cls, text: str) -> Method:
        base, plus, after = text.partition("+")
        if plus:
            if after != "mixed" or base.partition(":")[0] not in ("prune", "cluster", "qat"):
                raise UserError(f"--methods: {text!r}: only prune, cluster and qat take '+mixed' (e.g. cluster:16+mixed)")
            return replace(cls.parse(base), then_mixed=True)
        kind, _, value = text.partition(":")
        if kind not in METHODS:
            raise UserError(f"--methods: {text!r} is not one of {', '.join(METHODS)} (e.g. prune:0.5, cluster:16)")
        if kind in ("prune", "cluster"):
            try:
                number = float(value) if kind == "prune" else int(value)
            except ValueError:
                raise UserError(
                    f"--methods: {text!r} needs a number: prune:SPARSITY (e.g. prune:0.5), cluster:K (e.g. cluster:16)"
                ) from None
            if kind == "prune" and not 0.0 <= number < 1.0:
                raise UserError(f"--methods: {text!r}: the sparsity must be a fraction in [0, 1), e.g. prune:0.5")
            if kind == "cluster" and not 2 <= number <= 256:
                raise UserError(f"--methods: {text!r}: the clusters must be a whole number in 2..256, e.g. cluster:16")
            return cls(kind, number)
        if value:
            raise UserError(f"--methods: {kind} takes no value, got {text!r}")
        return cls(kind)

    @property
    def tag(self) -> str:
        if self.kind == "prune":
            return f"prune{round(100 * self.value)}"
        if self.kind == "cluster":
            return f"cluster{self.value}"
        return self.kind

    @property
    def description(self) -> str:
        if self.kind == "prune":
            return f"magnitude pruning to {self.value:.0%} sparsity"
        if self.kind == "cluster":
            return f"weight clustering, {self.value} values per layer"
        return {"qat": "quantization-aware training", "mixed": "mixed precision", "calibration": "calibration study"}[self.kind]


@dataclass(frozen=True)
class CompressConfig:
    run: str
    models: tuple[str, ...] | None = None  # None: every model the run trained
    methods: tuple[str, ...] = DEFAULT_METHODS
    finetune_steps: int = 150
    finetune_lr: float = 1e-4
    batch_size: int = 8
    max_miou_drop: float = 1.0
    val_images: int = 100  # held-out (validation) images the mixed-precision search is measured on
    calib_sizes: tuple[int, ...] = (8, 32, 128, 512)
    bench_runs: int = 10  # timed runs per artifact; 0: no benchmark
    threads: int = 2
    seed: int = 0
    strict: bool = False  # exit non-zero when a compressed model's conversion gate fails
    progress: bool = True
