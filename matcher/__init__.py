"""matcher: which animated production does a leaked frame belong to?

Public API: `Matcher` (create / open / rebuild / add / match / match_many / match_dump), the result
types, and the errors: every error matcher raises to its user derives from `MatcherError`.
Imports are lazy so that `match cel.png` pays only for what it uses (no torch for `classic`).
"""

from __future__ import annotations

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "Matcher": "matcher.api",
    "DuplicateInput": "matcher.api",
    "MatcherError": "matcher.errors",
    "StoreError": "matcher.search.store",
    "EmbedderError": "matcher.embed",
    "InputError": "matcher.decode.sources",
    "ReportError": "matcher.write.report",
    "MatchResult": "matcher.records",
    "TitleScore": "matcher.records",
    "Evidence": "matcher.records",
    "DumpStats": "matcher.run.dump",
    "run_dump": "matcher.run.dump",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'matcher' has no attribute {name!r}")
