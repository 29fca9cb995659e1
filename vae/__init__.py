"""A variational autoencoder baseline: Hydra configs, modular model and objectives, TensorBoard."""

__version__ = "0.1.0"
