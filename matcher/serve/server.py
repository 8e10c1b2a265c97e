"""Start the server: build its state (one clear line for every run-level problem), fork the decode
workers while the process has no threads yet, then hand the app to uvicorn."""

from __future__ import annotations

import sys
import tempfile

from matcher.api import MatcherError
from matcher.serve.app import ServeConfig, State, create_app, is_loopback
from matcher.write.report import ReportError


def main(config: ServeConfig) -> int:
    def err(message: str) -> int:
        print(f"matcher: error: {message}", file=sys.stderr)
        return 2

    if config.token is None and not is_loopback(config.host):
        return err(
            f"binding to {config.host} exposes the index beyond this machine: set a token with "
            "--token or $MATCHER_SERVE_TOKEN"
        )
    if config.token is not None and len(config.token) < 16:
        return err("the token must be at least 16 characters")
    for path in config.reports:
        try:
            open(path, "rb").close()
        except OSError as exc:
            return err(f"{path}: cannot read report: {exc.strerror or exc}")
    try:
        state = State(config)
    except MatcherError as exc:
        return err(str(exc))
    except ReportError as exc:
        return err(f"review log {exc}")
    except ValueError as exc:  # a --report file that is not a dump report
        return err(f"--report: {exc}")
    except OSError as exc:
        return err(f"{getattr(exc, 'filename', None) or 'serve'}: {exc.strerror or exc}")
    # Every temporary file of this process (the multipart parser's spools of large uploads too)
    # goes to the server's private directory, mode 0700.
    tempfile.tempdir = str(state.workdir)
    state.engine.decoder.start()  # forked before the listening socket exists: workers never hold it
    import socket

    import uvicorn

    try:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(128)
    except OSError as exc:
        state.close()
        return err(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")
    app = create_app(config, state)
    info = state.holder.matcher.info()
    print(
        f"matcher serve: http://{config.host}:{config.port}/  index {info['index']} "
        f"({info['references']} references, {len(info['titles'])} titles); review log {state.reviews.path}",
        file=sys.stderr,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", server_header=False)
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        state.close()
    return 0
