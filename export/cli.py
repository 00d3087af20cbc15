"""`vrclip-export`: train, evaluate, export, quantise and build engines (commands land with #4 and #5)."""

from __future__ import annotations

from vrclip.edge.cli_support import make_app, run
from vrclip.export.commands import register as register_model_commands
from vrclip.export.export_cli import register as register_export_commands
from vrclip.export.trt_cli import register as register_tensorrt_commands

app = make_app(
    "vrclip-export", "Train/evaluate VRCLIP, export ONNX, quantise to INT8 and build TensorRT engines."
)
register_model_commands(app)
register_export_commands(app)
register_tensorrt_commands(app)


@app.command("env")
def env() -> None:
    """Report the torch side of this machine: torch, torchvision, open_clip, onnx versions."""
    import importlib

    for name in ("torch", "torchvision", "open_clip", "onnx", "onnxruntime"):
        try:
            module = importlib.import_module(name)
            print(f"{name:12s} {getattr(module, '__version__', '?')}")
        except ImportError as exc:
            print(f"{name:12s} missing ({exc}); install with: pip install 'vrclip-edge[export]'")


def main() -> None:
    run(app)
