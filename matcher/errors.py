"""The one base class of every error matcher raises to its user: ``except matcher.MatcherError``.

Each subclass's str() is one line for the user. Kept in a module of its own (no imports) so that the
store, the embedders and the decoders can derive from it without importing the API.
"""

from __future__ import annotations


class MatcherError(Exception):
    """A problem a user can get from matcher (no index, wrong model, unreadable input, ...)."""


#: What became of an input that gave no verdict: it could not be read or decoded ("error"), or it was
#: deliberately not matched (not media, a link not followed, a duplicate: "skipped").
STATUSES = ("error", "skipped")


class ItemError(MatcherError):
    """The one error type for one input (a file, a video still, an upload): ``path`` (None where
    the caller knows it), ``reason`` (one line), ``status`` (see STATUSES) and an optional ``kind``.
    Plain `match`, `index add`, dump mode and serve all report an unusable input through it."""

    def __init__(self, path, reason: str, status: str = "error", kind: str | None = None):
        super().__init__(f"{path}: {reason}" if path is not None else reason)
        self.path = str(path) if path is not None else None
        self.reason = reason
        self.status = status
        self.kind = kind
