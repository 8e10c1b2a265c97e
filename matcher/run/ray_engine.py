"""The Ray executor (issue 16): the same stages as the local pool (run.stages), run by Ray Data on
a cluster: read -> map_batches(DecodeStage) as tasks -> map_batches(EmbedStage) on an actor pool
(one GPU per actor when the cluster has GPUs) -> results streamed back in input order to the
caller, who stores or scores them exactly as the local executor's (index add, match, dump mode).
`pip install 'matcher[ray]'`; without an address a local Ray is started on this machine's cores.

A worker that dies mid-run is replaced and its batch run again (Ray's task retries and actor
restarts): every file still gives exactly one result."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from typing import Any

from matcher.decode.decoder import Limits
from matcher.errors import MatcherError
from matcher.run.stages import DecodeStage, EmbedStage


class RayUnavailable(MatcherError):
    """--engine ray without Ray installed, or a cluster that cannot be reached."""


def connect(address: str | None = None, workers: int | None = None):
    """The `ray` module, initialised: the cluster at `address`, else a local one with `workers`
    CPUs (default: all cores). An already initialised Ray (a test session, a notebook) is reused."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray: pip install 'matcher[ray]'") from None
    if not ray.is_initialized():
        opts = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        try:
            if address:
                ray.init(address=address, **opts)
            else:
                ray.init(num_cpus=workers or os.cpu_count() or 1, **opts)
        except Exception as exc:  # unreachable address, version mismatch: one line, not a traceback
            raise RayUnavailable(
                f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}"
            ) from None
    # Ray Data logs every execution at INFO on stderr, beside the results; it re-reads its level
    # from this variable each time it configures its loggers (once per dataset run).
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own
    return ray


def embedder_options(embedder) -> dict:
    """What create_embedder needs to build the same embedder inside an actor."""
    opts = {}
    if getattr(embedder, "pretrained", None):
        opts["pretrained"] = embedder.pretrained
    if getattr(embedder, "models_dir", None):
        opts["models_dir"] = embedder.models_dir
    return opts


def decode_and_embed(
    tasks: list,
    embedder,
    limits: Limits,
    *,
    batch_size: int,
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[tuple[Any, dict]]:
    """(key, result) for every segment of every task ((key, decoder.Task) pairs), streamed in input
    order; each decoded part of a result carries its vector (float32) where the local executor
    carries the prepared still."""
    ray = connect(address, workers)
    if not tasks:
        return
    gpus = int(ray.cluster_resources().get("GPU", 0))
    # rows come back in input order as they are done (streamed: a dump's report grows as it runs)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    items = [{"key": n, "task": pickle.dumps(task)} for n, (_key, task) in enumerate(tasks)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * (workers or 2))))
    decode_pool = ray.data.TaskPoolStrategy(size=workers) if workers else None
    ds = ds.map_batches(DecodeStage(limits, embedder.prepare), batch_size=1, compute=decode_pool, num_cpus=1)
    # The embed actors ask for other resources than the decode tasks (half a CPU beside a GPU, or
    # beside the decoders on a CPU node): Ray Data would otherwise fuse decode into the actor pool,
    # and one actor would decode every file in turn (measured: 60 files 18-40 s instead of ~2 s).
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"spec": embedder.spec, "options": embedder_options(embedder)},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),
        num_gpus=1 if gpus else 0,
        num_cpus=0.01,
    )
    for row in ds.iter_rows():
        yield tasks[int(row["key"])][0], pickle.loads(row["result"])
