"""The torch-free inference runtime: onnxruntime sessions, beam search in numpy, fill-mask."""
