"""``weightdb serve``: the KServe v2 REST server on uvicorn, bound to localhost by default;
with ``--ray``, the same API through Ray Serve replicas (``weightdb.scaleout.serve``)."""

import os
import resource
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from weightdb.cli.common import (
    BatchInvariantOption,
    MemoryOption,
    PolicyOption,
    TraceOption,
    console,
    db_path,
    err_console,
    open_db,
    tracing,
)
from weightdb.cli.vocabulary import (
    OldSpelling,
    duration_option,
    size_option,
)
from weightdb.database import DEFAULT_BUDGET
from weightdb.errors import WeightDBError
from weightdb.server.config import ServerConfig

_DEFAULTS = ServerConfig()
SWITCH_INTERVAL_S = 0.0005
TOKEN_VARIABLE = "WEIGHTDB_TOKEN"
_FILES_BESIDES_CONNECTIONS = 256  # page files, the catalog, logs
OLD_SERVE_SPELLINGS = {
    "budget": OldSpelling("--memory"),
    "max_wait_ms": OldSpelling("--max-wait", "ms"),
    "timeout_s": OldSpelling("--timeout", "s"),
    "header_timeout_s": OldSpelling("--header-timeout", "s"),
    "body_timeout_s": OldSpelling("--body-timeout", "s"),
}
"""Option names of earlier releases, accepted with a warning until the next one."""


def serve_command(
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback exposes the server.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    use_ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Serve through Ray Serve: the cluster RAY_ADDRESS names, else a local one.",
        ),
    ] = False,
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            help="Ray Serve replicas (with --ray), each with its own --memory; models that "
            "share pages go to the same one.",
        ),
    ] = 1,
    memory: MemoryOption = None,
    policy: PolicyOption = None,
    batch_invariant: BatchInvariantOption = True,
    trace: TraceOption = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="Require 'Authorization: Bearer TOKEN', TOKEN read from this file (or set "
            "WEIGHTDB_TOKEN).",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="The token itself; other users can read it in the process list, so prefer "
            "WEIGHTDB_TOKEN or --token-file.",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Rows one batch may hold.")
    ] = _DEFAULTS.max_batch,
    max_wait: Annotated[
        float,
        duration_option(
            help_text="How long a request may wait for others to batch with (0: not at all).",
            default_seconds=_DEFAULTS.max_wait_ms / 1000,
            allow_zero=True,
        ),
    ] = _DEFAULTS.max_wait_ms / 1000,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Requests waiting to run; beyond it, 429.")
    ] = _DEFAULTS.max_queue,
    timeout: Annotated[
        float,
        duration_option(
            help_text="From arrival to answer; beyond it, 504.",
            default_seconds=_DEFAULTS.timeout_s,
        ),
    ] = _DEFAULTS.timeout_s,
    max_body: Annotated[
        int, size_option(help_text="Largest request body; beyond it, 413.", default="64MiB")
    ] = _DEFAULTS.max_body,
    header_timeout: Annotated[
        float,
        duration_option(
            help_text="For a connection to send a request head; beyond it, 408.",
            default_seconds=_DEFAULTS.header_timeout_s,
        ),
    ] = _DEFAULTS.header_timeout_s,
    body_timeout: Annotated[
        float,
        duration_option(
            help_text="From a request head to its body's end; beyond it, 408.",
            default_seconds=_DEFAULTS.body_timeout_s,
        ),
    ] = _DEFAULTS.body_timeout_s,
    max_header_size: Annotated[
        int,
        size_option(help_text="Largest request line and headers; beyond it, 431.", default="64KiB"),
    ] = _DEFAULTS.max_header_bytes,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections; beyond it, 503 with Retry-After.")
    ] = _DEFAULTS.max_connections,
) -> None:
    """Serve the database over HTTP: KServe v2 REST, Prometheus /metrics, OpenAPI at /docs."""
    config = ServerConfig(
        max_batch=max_batch,
        max_wait_ms=max_wait * 1000,
        max_queue=max_queue,
        timeout_s=timeout,
        max_body=max_body,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_header_bytes=max_header_size,
        max_connections=max_connections,
        token=_token(token, token_file),
    )
    if use_ray:
        _serve_on_ray(host, port, replicas, memory, policy, batch_invariant, trace, config)
        return
    if replicas != 1:
        raise WeightDBError("--replicas needs --ray; add --ray or drop --replicas")
    # The batching worker runs the engine's Python loops; at the default 5 ms switch interval
    # the event loop would wait that long for the GIL at every step of every HTTP request.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # Imported here so that every other command starts without loading the web stack.
    import uvicorn

    from weightdb.server.app import create_app
    from weightdb.server.connections import guarded_protocol

    _allow_open_files(config.max_connections)

    with open_db(memory, policy, batch_invariant) as db:
        console.print(
            f"serving {db.path} ({len(db.models())} models) on http://{host}:{port}/v2 "
            f"(docs at /docs){'; bearer token required' if config.token else ''}"
        )
        with tracing(db, trace):
            uvicorn.run(
                create_app(db, config),
                host=host,
                port=port,
                log_level="warning",
                http=guarded_protocol(config),
            )


def _serve_on_ray(
    host: str,
    port: int,
    replicas: int,
    memory: int | None,
    policy: str | None,
    batch_invariant: bool,
    trace: Path | None,
    config: ServerConfig,
) -> None:
    """Deploy on Ray Serve and wait for Ctrl-C, then take the application down."""
    if trace is not None:
        raise WeightDBError("--trace records one process's pool; drop it with --ray")
    unused = [
        name
        for name, value, default in (
            ("--header-timeout", config.header_timeout_s, _DEFAULTS.header_timeout_s),
            ("--max-header-size", config.max_header_bytes, _DEFAULTS.max_header_bytes),
        )
        if value != default
    ]
    if unused:
        raise WeightDBError(
            f"{' and '.join(unused)} cannot apply with --ray (Ray Serve's proxy reads the "
            "request heads); drop them"
        )
    path = db_path()
    import ray.serve  # Ray loads only when asked for

    import weightdb.ray as weightdb_ray

    weightdb_ray.connect_cluster()
    url = weightdb_ray.serve(
        path,
        replicas=replicas,
        budget=DEFAULT_BUDGET if memory is None else memory,
        policy=policy,
        batch_invariant=batch_invariant,
        config=config,
        host=host,
        port=port,
    )
    console.print(
        f"serving {path} on {url}/v2 through {replicas} Ray Serve "
        f"replica{'s' if replicas > 1 else ''}{'; bearer token required' if config.token else ''}"
        "; Ctrl-C stops"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray.serve.delete(weightdb_ray.SERVE_APP)


def _token(given: str | None, path: Path | None) -> str | None:
    """The bearer token from exactly one of --token-file, WEIGHTDB_TOKEN and --token (which
    leaves it in /proc/PID/cmdline for every local user to read, so it earns a warning)."""
    environment = os.environ.get(TOKEN_VARIABLE) or None
    sources = [
        s
        for s, v in (("--token-file", path), (TOKEN_VARIABLE, environment), ("--token", given))
        if v
    ]
    if len(sources) > 1:
        raise WeightDBError(f"the token is given by {' and '.join(sources)}; give it one way")
    if given:
        err_console.print(
            f"warning: --token is visible to every local user in the process list; set "
            f"{TOKEN_VARIABLE} or use --token-file instead",
            highlight=False,
        )
        return given
    if path is None:
        return environment
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise WeightDBError(f"cannot read the token file {path}: {error}") from None
    if not token:
        raise WeightDBError(f"the token file {path} is empty; write the token into it")
    return token


def _allow_open_files(connections: int) -> None:
    """Raise the soft limit on open files towards the hard one, so ``--max-connections`` (plus
    the database's own files) is reached before the process runs out of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + _FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < wanted:
            err_console.print(
                f"warning: only {raised} open files allowed (hard limit); --max-connections "
                f"{connections} may not be reached",
                highlight=False,
            )
