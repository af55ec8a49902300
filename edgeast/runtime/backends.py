"""One interface over the three ways to run a keyword model: `.pte`, `.onnx`, checkpoint.

`open_backend(path)` picks by suffix. Every backend takes one raw PCM window
`[window_samples]` float32 and returns logits `[classes]`; its `meta` says
what the logits mean and how to stream.

Threads: ONNX Runtime takes `intra_op_num_threads` per session. ExecuTorch's
XNNPACK delegate runs on ExecuTorch's one process-wide threadpool (sized to
the performance cores by default). Its Python runtime has no per-program
setting, only `portable_lib._unsafe_reset_threadpool(n)` (and
`_threadpool_get_thread_count()`), and a reset while a loaded program is alive
leaves that program's XNNPACK runtime with a dangling pool (it segfaults on
its next run). So an `ExecuTorchBackend` with `num_threads` resizes the pool
before it loads, and refuses when another live `.pte` backend would lose its
pool; the pool keeps the last size set. To compare thread counts, open them
one after another (dropping the previous backend) or in separate processes.
A checkpoint backend sets PyTorch's (also process-wide) intra-op thread count.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import torch

from edgeast.export.metadata import ArtifactMeta


class BackendError(ValueError):
    """A model file that cannot be opened, or a window it cannot take."""


class Backend:
    """A loaded model: `infer(window [S]) -> logits [C]`, `infer_batch([N, S]) -> [N, C]`."""

    format = ""

    def __init__(self, path: Path, meta: ArtifactMeta):
        self.path = path
        self.meta = meta

    def infer(self, window: np.ndarray) -> np.ndarray:
        return self._run(self._check(window, 1)[None])[0]

    def infer_batch(self, windows: np.ndarray) -> np.ndarray:
        """Fixed-batch formats run the windows one at a time."""
        windows = self._check(windows, 2)
        return np.stack([self._run(window[None])[0] for window in windows])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """`[B, S]` float32 -> `[B, C]` float32."""
        raise NotImplementedError

    def _check(self, windows: np.ndarray, dims: int) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float32)
        expected = "[samples]" if dims == 1 else "[windows, samples]"
        if windows.ndim != dims or windows.shape[-1] != self.meta.window_samples:
            raise BackendError(
                f"{self.path.name}: got an input of shape {windows.shape}; it takes {expected} float32 "
                f"with samples = {self.meta.window_samples} ({self.meta.window_samples / self.meta.sample_rate:g} s "
                f"at {self.meta.sample_rate} Hz)"
            )
        return np.ascontiguousarray(windows)


class ExecuTorchBackend(Backend):
    format = "pte"
    _live: weakref.WeakSet = weakref.WeakSet()  # loaded programs bound to the current threadpool

    def __init__(self, path: Path, meta: ArtifactMeta, num_threads: int | None = None):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        super().__init__(path, meta)
        current = portable_lib._threadpool_get_thread_count()
        if num_threads is not None and num_threads != current:
            if len(self._live):
                raise BackendError(
                    f"{path}: cannot run ExecuTorch with {num_threads} threads while another .pte backend uses its "
                    f"process-wide pool of {current}; drop that backend first or use a separate process"
                )
            portable_lib._unsafe_reset_threadpool(num_threads)
        self.num_threads = portable_lib._threadpool_get_thread_count()
        try:
            self._program = Runtime.get().load_program(path)  # kept: the method must not outlive it
            self._forward = self._program.load_method("forward")
        except (RuntimeError, ValueError) as err:
            raise BackendError(f"{path}: ExecuTorch cannot load this program ({err}); re-export it") from err
        self._live.add(self)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # The output may live in the method's own memory, reused by the next call: copy it.
        return self._forward.execute([torch.from_numpy(batch)])[0].numpy().copy()


class OnnxBackend(Backend):
    format = "onnx"

    def __init__(self, path: Path, meta: ArtifactMeta, num_threads: int | None = None):
        import onnxruntime as ort

        super().__init__(path, meta)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or 0  # 0: ONNX Runtime's default
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise BackendError(f"{path}: ONNX Runtime cannot load this model ({err}); re-export it") from err
        self._input = self._session.get_inputs()[0].name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]


class CheckpointBackend(Backend):
    """The PyTorch model of a checkpoint directory, for reference and evaluation."""

    format = "checkpoint"

    def __init__(self, path: Path, num_threads: int | None = None):
        from edgeast.models.checkpoint import load_model

        self.model = load_model(path).eval()
        fcfg = self.model.frontend.cfg
        meta = ArtifactMeta(
            labels=list(self.model.labels),
            sample_rate=fcfg.sample_rate,
            window_samples=fcfg.sample_rate,  # 1 s, what the front end pads to num_frames
            hop_samples=fcfg.sample_rate // 10,
            normalization={"mean": fcfg.mean, "std": fcfg.std},
            format=self.format,
            source=str(path),
        )
        meta.thresholds = {label: meta.default_threshold for label in meta.keywords()}
        super().__init__(path, meta)
        if num_threads is not None:
            torch.set_num_threads(num_threads)

    def infer_batch(self, windows: np.ndarray) -> np.ndarray:
        return self._run(self._check(windows, 2))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(batch)).numpy()


def open_backend(path: str | Path, num_threads: int | None = None) -> Backend:
    """Load a `.pte` or `.onnx` export (with its sidecar `model.json`) or a checkpoint directory."""
    path = Path(path)
    if num_threads is not None and num_threads < 1:
        raise BackendError(f"num_threads={num_threads}: use 1 or more, or None for the runtime's default")
    if not path.exists():
        raise BackendError(f"{path}: no such model file or checkpoint directory")
    if path.is_dir():
        return CheckpointBackend(path, num_threads)
    backends = {".pte": ExecuTorchBackend, ".onnx": OnnxBackend}
    if path.suffix not in backends:
        raise BackendError(f"{path}: unknown model type {path.suffix!r}; give a .pte, a .onnx or a checkpoint directory")
    try:
        meta = ArtifactMeta.load(path)
    except FileNotFoundError as err:
        raise BackendError(str(err)) from None
    meta.format = backends[path.suffix].format
    return backends[path.suffix](path, meta, num_threads)
