"""Every exception tamer raises on purpose, in one place that imports nothing of tamer.

Each message names the file, key or input at fault and what to do; the command line prints it as one line. The
classes derive from the built-in exception a caller would already catch (``ValueError`` for bad input,
``FileNotFoundError`` for missing weights), so code written against plain Python keeps working.
"""

from __future__ import annotations

import pickle


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


class UnknownKeyError(ConfigError, TypeError):
    """A config dataclass built in Python was given a keyword it does not have (a TypeError, as Python's own)."""


class InputError(ValueError):
    """An argument or file given to tamer is out of range, unsafe or would overwrite something; names the input."""


class ImageError(ValueError):
    """A file is not a readable image; the message names it."""


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or unsafe; the message names the file."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file references code that would run on unpickling; nothing from it was executed."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, most often); its partial folder was removed."""


class MissingWeightsError(FileNotFoundError):
    """A pretrained weights file is not where it was looked for; the message says how to provide it."""


class NonFiniteLossError(FloatingPointError):
    """A loss or logged value became NaN or infinite; the message names which, and at which step."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last checkpoint on disk is the last good state."""


class CurvesUnavailable(RuntimeError):
    """matplotlib is not installed (``pip install 'tamer-vq[train]'``)."""
