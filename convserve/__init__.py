"""convserve: the top layer, where the training and service command lines meet.

``training/`` (the network, data, trainer, bundles and store) and ``service/`` (the Flask
model server) never import this package; ``convserve.cli`` imports both to build the
``convserve`` command.
"""

from training import __version__

__all__ = ["__version__"]
