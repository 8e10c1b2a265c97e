"""`matcher serve`: a local web app and HTTP API over the `Matcher` API (see docs/SERVE.md).

Imported only by the `serve` command, so `match cel.png` never loads the web stack.
"""
