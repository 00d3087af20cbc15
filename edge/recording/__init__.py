"""Session recordings: one HDF5 file per session, readable while written and after a crash.

`SessionWriter` records radar, camera and depth frames with ground truth; `SessionReader` serves the
replay source and the trainer. The on-disk layout is documented in `vrclip.edge.recording.schema`.
"""

from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.recording.schema import FORMAT, SCHEMA_VERSION
from vrclip.edge.recording.writer import SessionWriter

__all__ = ["FORMAT", "SCHEMA_VERSION", "SessionReader", "SessionWriter"]
