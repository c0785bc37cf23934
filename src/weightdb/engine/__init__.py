"""Inference engine: a numpy ONNX executor whose weight operands stream through the buffer pool."""
