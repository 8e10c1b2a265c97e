"""matcher: which animated production does a leaked frame belong to?

Public API: `Matcher` (create / open / add / match / match_many) and the result types.
Imports are lazy so that `match cel.png` pays only for what it uses (no torch for `classic`).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Matcher", "MatcherError", "MatchResult", "TitleScore", "Evidence", "__version__"]


def __getattr__(name: str):
    if name in ("Matcher", "MatcherError"):
        from matcher import api

        return getattr(api, name)
    if name in ("MatchResult", "TitleScore", "Evidence"):
        from matcher import results

        return getattr(results, name)
    raise AttributeError(f"module 'matcher' has no attribute {name!r}")
