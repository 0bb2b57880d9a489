"""convserve training: a pure-NumPy convolutional network, its data, trainer and bundles."""

__version__ = "0.1.0"
