"""Base of the library's named exceptions: the CLI turns any of them into one line and exit code 2."""


class GeotrainrError(Exception):
    """A user-facing problem with an input (file, argument, checkpoint, server answer)."""
