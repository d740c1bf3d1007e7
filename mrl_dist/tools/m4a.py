"""Writing AAC in MP4 (m4a) files with PyAV: VoxCeleb2's format, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_m4a(path: Path, wave: np.ndarray, sample_rate: int) -> Path:
    """wave [T, C] float32 -> AAC in an MP4 (m4a) container, encoded with PyAV."""
    import av  # PyAV, a dependency; imported here so this module loads without it

    path.parent.mkdir(parents=True, exist_ok=True)
    layout = "stereo" if wave.shape[1] == 2 else "mono"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave.T), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
