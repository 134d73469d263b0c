"""Exporters (ONNX, TensorRT) and the official-checkpoint importer; installed as fgresq_sdk.export."""
