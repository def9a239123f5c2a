"""Serving: ONNX Runtime + Pillow + BentoML. Never imports torch."""
