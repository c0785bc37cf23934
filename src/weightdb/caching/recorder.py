"""Recording the page requests of real work (predict, SQL, serving) as a replayable trace.

The buffer pool reports every request with the model it was made for, and every query start:
each run of a prepared model, whether ``predict``, SQL or the server asked for it. The file is
the trace format of ``weightdb.caching.trace`` with one extra key per request, ``query``, so
``weightdb cache simulate`` can replay a real run under any policy.
"""

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from weightdb.storage.page_files import PageLocation


class TraceRecorder:
    def __init__(self) -> None:
        self._requests: list[tuple[int, str | None, int]] = []
        self._query = 0
        self._lock = threading.Lock()

    def start_query(self) -> int:
        with self._lock:
            self._query += 1
            return self._query

    def record(self, page_id: int, model: str | None) -> None:
        with self._lock:
            self._requests.append((page_id, model, self._query))

    def write(
        self,
        path: Path,
        locate: Callable[[int], PageLocation],
        page_models: Callable[[int], Iterable[str]],
    ) -> int:
        """Write the trace; returns the number of requests. Pages list every model that
        references them (from the catalog) plus any model seen requesting them."""
        with self._lock:
            requests = list(self._requests)
        seen: dict[int, set[str]] = {}
        for page_id, model, _ in requests:
            seen.setdefault(page_id, set()).add(model or "unknown")
        pages = {
            str(page_id): {
                "models": sorted(set(page_models(page_id)) | models),
                "bytes": locate(page_id).length,
            }
            for page_id, models in seen.items()
        }
        trace = {
            "pages": pages,
            "requests": [
                {"model": model or "unknown", "page": str(page_id), "query": query}
                for page_id, model, query in requests
            ],
        }
        path.write_text(json.dumps(trace))
        return len(requests)
