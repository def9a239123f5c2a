"""The shared contract: what serving, index building, training and export must agree on, torch-free.

image decoding (``image``), the bundle format (``bundle``) and its runner (``encoder``: ONNX Runtime, which both
the service and export's parity check use), the dataset and folder readers (``sources``, ``splits``) and the
atomic-write recipe (``atomic``). Training imports this sub-package and nothing else of ``serving``; the rule
is checked by import-linter (``pyproject.toml``).
"""
