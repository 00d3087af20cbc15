"""Inference backends behind one interface: TensorRT on the GPU, ONNX Runtime anywhere.

`open_engine(path)` reads the package's manifest, checks the engine belongs to this box and model,
and returns an `InferenceBackend`. TensorRT, CuPy and ONNX Runtime are imported only when a backend
that needs them is opened, so this package imports on any machine.
"""

from vrclip.edge.inference.base import EngineMismatchError, FeedError, InferenceBackend, check_feeds
from vrclip.edge.inference.factory import PackagePaths, open_engine

__all__ = [
    "EngineMismatchError",
    "FeedError",
    "InferenceBackend",
    "PackagePaths",
    "check_feeds",
    "open_engine",
]
