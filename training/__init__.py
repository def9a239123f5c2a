"""BYOL pretraining (PyTorch): the only package that learns. It writes f_θ; export turns that into a bundle.

config (the dataclass tree + presets) · networks · augment · loss · ema · schedules · optim (LARS) · data ·
byol (the networks' wiring and one step) · state / budget / steplog / monitor / summary (the loop's parts) ·
train (the loop) · checkpoint · artifact (f_θ alone) · eval (PyTorch embedders) · export (ONNX + parity) ·
distributed (torchrun/DDP) · tv (torchvision import shim). Imports torch, the shared contract and index metrics.
"""
