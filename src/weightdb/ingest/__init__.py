"""Import and export: safetensors, Hugging Face directories, npz, ONNX and PyTorch state dicts."""
