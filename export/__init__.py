"""vrclip.export: the torch side — VRCLIP model, training, evaluation, ONNX export, INT8, TensorRT builds."""
