"""A quiet terminal: the log lines TensorFlow, absl, LiteRT and torch print on their own, silenced.

TensorFlow prints a dozen C++ lines when it is imported ("Unable to register cuDNN factory",
"computation placer already registered", ...), most of them through absl before any log level
can apply, and LiteRT prints "Created TensorFlow Lite XNNPACK delegate" for every interpreter.
None of them is about the user's model. ``quiet_libraries()`` sets the libraries' own log
levels and arranges that the first ``import tensorflow`` runs with file descriptor 2 muted;
``muted_stderr()`` does the same around a block. Both do nothing when ``SEG2TFLITE_VERBOSE`` is
set (``--verbose`` and ``--debug`` set it, and worker processes inherit it). Python exceptions are
not affected: they travel as objects, not through the muted descriptor.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from collections.abc import Iterator

VERBOSE_VARIABLE = "SEG2TFLITE_VERBOSE"
NOISY_IMPORTS = ("tensorflow",)


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0")


@contextlib.contextmanager
def muted_stderr() -> Iterator[None]:
    """Send what native code writes to stderr (fd 2) to /dev/null for the duration of the block."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietFirstImport(importlib.abc.MetaPathFinder):
    """Runs the first import of each named top-level module with stderr muted."""

    def __init__(self, names: tuple[str, ...]):
        self.pending = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:  # stays pending until it runs: find_spec alone imports nothing
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module):
            self.pending.discard(fullname)
            with muted_stderr():
                exec_module(module)

        spec.loader.exec_module = quiet_exec
        return spec


def quiet_libraries() -> None:
    """Silence the libraries' start-up noise for this process and the processes it starts."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # torch.load(weights_only=True) warns about a checkpoint's pickle protocol before refusing it in one line
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    # the TFLite converter on a cut-out int8 op (`profile`): its inputs' statistics are in the op's own tensors
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected", category=UserWarning)
    # SegNet's training form on CPU, every step: a 2x2/stride-2 pool's positions never collide, so
    # max_unpool2d writes each output once and is deterministic in fact
    warnings.filterwarnings("ignore", message="max_unpooling2d_forward_out does not have a deterministic", category=UserWarning)
    pending = tuple(name for name in NOISY_IMPORTS if name not in sys.modules)
    if pending and not any(isinstance(f, _QuietFirstImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFirstImport(pending))
