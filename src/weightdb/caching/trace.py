"""Page-request traces: the file format, loading with validation, and writing.

A trace is one JSON object::

    {
      "pages": {"<page id>": {"models": ["m1", "m2"], "bytes": 4194304}, ...},
      "requests": [{"model": "m1", "page": "<page id>"}, ...]
    }

``pages`` describes every page the requests name: the models that reference it (all of them,
not only those that requested it) and its size in bytes. ``requests`` lists page requests in
arrival order, each with the model it was made for. Page ids are strings (JSON object keys);
other keys are ignored, so a recorder may add e.g. the query that caused a request. Recording
from live serving writes exactly this format, so a real run can be replayed offline under every
policy, Belady's optimum included.

A request may also carry ``query``, an integer naming the query (one prediction) it was made
for, as recording writes it. When every request has one, the trace keeps them: they tell apart
two queries of one model in a row, which ``online_bound`` needs.

In memory pages are numbered 0..n-1 in file order, which is what policies see as page ids.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from weightdb.errors import WeightDBError


class TraceFormatError(WeightDBError):
    """A trace file is not valid JSON or does not follow the trace format."""


class Request(NamedTuple):
    model: str
    page: int  # index into Trace.page_ids


@dataclass(frozen=True)
class Trace:
    page_ids: tuple[str, ...]
    page_bytes: tuple[int, ...]
    page_models: tuple[tuple[str, ...], ...]
    requests: tuple[Request, ...]
    queries: tuple[int, ...] | None = None  # per request, the query it was made for

    @classmethod
    def build(
        cls,
        pages: Mapping[str, tuple[Sequence[str], int]],
        requests: Sequence[tuple[str, str]],
        queries: Sequence[int] | None = None,
    ) -> "Trace":
        """A trace from ``{page id: (models, bytes)}``, ``(model, page id)`` requests and,
        optionally, the query of each request."""
        index = {page: i for i, page in enumerate(pages)}
        if queries is not None and len(queries) != len(requests):
            raise TraceFormatError(f"{len(queries)} query ids for {len(requests)} requests")
        return cls(
            page_ids=tuple(pages),
            page_bytes=tuple(size for _, size in pages.values()),
            page_models=tuple(tuple(models) for models, _ in pages.values()),
            requests=tuple(Request(model, index[page]) for model, page in requests),
            queries=None if queries is None else tuple(queries),
        )

    @property
    def working_set_bytes(self) -> int:
        """Bytes of all distinct pages the requests touch: what a pool needs to never miss twice."""
        return sum(self.page_bytes[page] for page in {request.page for request in self.requests})

    def starts_query(self, number: int) -> bool:
        """Whether request ``number`` is the first of a query: by query id when the trace has
        them, else when the model changes (back-to-back queries of one model then merge)."""
        if number == 0:
            return True
        if self.queries is not None:
            return self.queries[number] != self.queries[number - 1]
        return self.requests[number].model != self.requests[number - 1].model

    def models_of(self, page: int) -> tuple[str, ...]:
        """The models referencing page number ``page``: the ``page_models`` policies are given."""
        return self.page_models[page]

    def to_json(self) -> dict[str, Any]:
        return {
            "pages": {
                page: {"models": list(models), "bytes": size}
                for page, models, size in zip(
                    self.page_ids, self.page_models, self.page_bytes, strict=True
                )
            },
            "requests": [
                {"model": model, "page": self.page_ids[page]}
                | ({} if self.queries is None else {"query": self.queries[number]})
                for number, (model, page) in enumerate(self.requests)
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> "Trace":
        """Validate decoded JSON; raises TraceFormatError saying what is wrong and where."""
        pages = _field(data, "pages", dict, "the trace")
        requests = _field(data, "requests", list, "the trace")
        table = {}
        for page, entry in pages.items():
            where = f"page {page!r}"
            models = _field(entry, "models", list, where)
            if not all(isinstance(model, str) for model in models):
                raise TraceFormatError(f"{where}: 'models' must be a list of model names")
            size = _field(entry, "bytes", int, where)
            if isinstance(size, bool) or size <= 0:
                raise TraceFormatError(f"{where}: 'bytes' must be a positive integer, got {size}")
            table[page] = (models, size)
        pairs = []
        for number, request in enumerate(requests):
            where = f"request {number}"
            model = _field(request, "model", str, where)
            page = _field(request, "page", str, where)
            if page not in table:
                raise TraceFormatError(f"{where}: page {page!r} is not listed in 'pages'")
            if model not in table[page][0]:
                raise TraceFormatError(
                    f"{where}: model {model!r} does not reference page {page!r} "
                    f"(its models: {', '.join(table[page][0]) or 'none'})"
                )
            pairs.append((model, page))
        queries = [request.get("query") for request in requests]
        whole = all(isinstance(q, int) and not isinstance(q, bool) for q in queries)
        return cls.build(table, pairs, queries if whole else None)


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise TraceFormatError(f"{where} must be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise TraceFormatError(f"{where} has no {key!r} key")
    value = obj[key]
    if not isinstance(value, kind):
        raise TraceFormatError(
            f"{where}: {key!r} must be a JSON {_JSON_NAMES[kind]}, got {type(value).__name__}"
        )
    return value


_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "integer"}


def read_trace(path: Path) -> Trace:
    """Load and validate the trace file at ``path``."""
    try:
        text = path.read_text()
    except OSError as error:
        raise TraceFormatError(f"cannot read trace {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TraceFormatError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    try:
        return Trace.from_json(data)
    except TraceFormatError as error:
        raise TraceFormatError(f"{path}: {error}") from None


def write_trace(trace: Trace, path: Path) -> None:
    """Write ``trace`` in the trace format."""
    path.write_text(json.dumps(trace.to_json()))
