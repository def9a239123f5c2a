"""The shared contract: what serving, index building, training and export must agree on, torch-free.

image decoding (``image``), the bundle format (``bundle``), the dataset and folder readers (``sources``) and
the atomic-write recipe (``atomic``). Training imports this sub-package and nothing else of ``serving``; the rule
is checked by import-linter (``pyproject.toml``).
"""
