"""Exceptions shared by the training tools, the store and the service.

They carry no HTTP: the CLI turns them into a message and exit code 2, the service maps them to
status codes in one error handler.
"""


class ConvserveError(Exception):
    """Base class: a problem a user or client caused, described in plain words."""


class DataError(ConvserveError):
    """A data file is missing, truncated or not in the expected format."""


class BundleInvalid(ConvserveError):
    """A weight bundle cannot be loaded: corrupt, tampered, pickled, or not matching its spec."""


class InvalidInput(ConvserveError):
    """Input pixels or images that the model cannot accept."""
