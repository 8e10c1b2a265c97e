"""The one base class of every error matcher raises to its user: ``except matcher.MatcherError``.

Each subclass's str() is one line for the user. Kept in a module of its own (no imports) so that the
store, the embedders and the decoders can derive from it without importing the API.
"""

from __future__ import annotations


class MatcherError(Exception):
    """A problem a user can get from matcher (no index, wrong model, unreadable input, ...)."""
