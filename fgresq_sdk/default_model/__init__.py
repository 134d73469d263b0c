"""The embedded default model bundle (model.json + ONNX graphs), used when no --model is given."""
