"""BYOL pretraining (PyTorch). The only package that learns; it writes f_θ, which export turns into a bundle."""
