"""The runtime settings a user may give a streaming detector, declared once for files and microphone.

`stream_files`, `listen` and the command line all take the same options; each
one left None keeps what the model's metadata says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeast.runtime.detector import Backend, StreamingDetector


@dataclass(frozen=True)
class DetectorOptions:
    thresholds: dict[str, float] | None = None  # per keyword, e.g. {"yes": 0.8}
    hop_s: float | None = None  # seconds between windows
    smoothing_hops: int | None = None  # posteriors averaged over this many hops
    refractory_s: float | None = None  # silence after a detection
    vad_threshold_db: float | None = None  # skip windows quieter than this (dBFS)
    num_threads: int | None = None  # inference threads when `artifact` is a path

    def build(self, artifact: str | Path | Backend) -> StreamingDetector:
        """A `StreamingDetector` on `artifact` with these options."""
        return StreamingDetector(artifact, thresholds=self.thresholds, hop_s=self.hop_s,
                                 smoothing_hops=self.smoothing_hops, refractory_s=self.refractory_s,
                                 vad_threshold_db=self.vad_threshold_db, num_threads=self.num_threads)
