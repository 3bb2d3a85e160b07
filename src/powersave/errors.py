"""Exceptions raised by powersave. Each says what is at fault and what to do about it."""


class PowersaveError(Exception):
    """Base class of powersave's own errors."""


class GraphError(PowersaveError, ValueError):
    """A graph or one of its nodes is malformed (wrong shapes, missing scale, ...)."""


class ConversionError(PowersaveError, ValueError):
    """A PyTorch model cannot be compiled into a time-to-first-spike network."""


class NetworkFileError(PowersaveError, ValueError):
    """A file is not a readable powersave network (truncated, corrupted, other version, ...)."""


class InputError(PowersaveError, ValueError):
    """Inputs given to a network have the wrong shape or values."""
