"""The gallery: enrolled identities and their exemplar embeddings, and open-set matching against them.

`store` keeps identities in SQLite (WAL, so the service writes while operators read), `matcher` holds a
normalised in-memory matrix that reloads when the database changes, `enrol` turns a stream of
embeddings into committed exemplars, `transfer` moves galleries between boxes (JSON or npz), and `cli`
is the `vrclip-edge gallery` command group.
"""

from vrclip.edge.gallery.enrol import Enroller, OfferResult
from vrclip.edge.gallery.matcher import Match, Matcher
from vrclip.edge.gallery.store import UNKNOWN, GalleryError, GalleryStore, IdentityInfo

__all__ = [
    "UNKNOWN",
    "Enroller",
    "GalleryError",
    "GalleryStore",
    "IdentityInfo",
    "Match",
    "Matcher",
    "OfferResult",
]
