"""Errors that are the user's to fix.

The CLIs print a `UserError` as one line and exit non-zero; anything else is a bug and keeps its
traceback. Keeping the two apart is what lets "never a traceback for user mistakes" hold.
"""


class UserError(Exception):
    """A problem with input the user controls (a file, a flag, a config value).

    The message must name the offending file, key or value and say what to do about it.
    """


class ConfigError(UserError):
    """The configuration file is malformed or holds a value outside its allowed range."""


class RecordingError(UserError):
    """A recording file is missing, truncated beyond use, foreign, or of an unknown schema version."""


class FrameRejected(RecordingError):
    """The writer refused one frame (wrong shape, size, clock or labels) and wrote nothing of it: the
    recording itself is fine and a live recorder may go on with the next frame."""


class SensorError(Exception):
    """A sensor (instrument, camera, depth camera) failed; the runtime degrades instead of dying."""
