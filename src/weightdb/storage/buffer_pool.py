"""The buffer pool: verified pages in memory under a byte budget, with pins and a policy.

Pinned pages are never evicted. Before a page is read, unpinned pages are evicted (in the
order the replacement policy chooses) until the new page fits, so resident bytes never exceed
the budget, pinned pages included. When pinned pages leave no room, the request fails with
the budget it would need, instead of overrunning memory.

Pages holding coded blocks (the lossless tier) are decoded on a miss, and the pool holds their
images (``page_images``); the budget counts exactly the bytes resident. When the policy evicts
an image, the page as read (coded, so smaller) stays, and coded pages go, oldest first, only
when no image is left to evict: a later request decodes a kept page again instead of reading
storage. So where the coded working set fits the budget and the decoded one does not, requests
cost decoding, not reads. Decoding a delta pins its base's page for the time it takes.

Arrays assembled from resident pages (``keep``, ``kept``) share the budget without ever displacing
a page, so the policy's decisions and the bytes read do not depend on them.
"""

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from weightdb.errors import BudgetExceededError
from weightdb.storage.assembled import AssembledArrays
from weightdb.storage.page_files import PageLocation, PageReader
from weightdb.storage.page_format import COLUMN_MAJOR, BlockEntry, Page
from weightdb.storage.page_images import decode_page
from weightdb.storage.policies import ReplacementPolicy
from weightdb.storage.policies.lru import LRUPolicy
from weightdb.storage.read_ahead import ReadAhead
from weightdb.units import format_size


@dataclass
class PoolStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_read: int = 0
    decoded_again: int = 0  # misses served by a coded page kept in memory, not by storage
    resident_pages: int = 0
    resident_bytes: int = 0  # images and raw pages, kept coded pages, assembled copies
    coded_bytes: int = 0  # of the coded pages kept after their images were evicted
    pinned_pages: int = 0
    budget_bytes: int | None = None

    @property
    def hit_ratio(self) -> float:
        requests = self.hits + self.misses
        return self.hits / requests if requests else 0.0


class RequestRecorder(Protocol):
    """Told of every page request and of every query start, e.g. to record a trace."""

    def record(self, page_id: int, model: str | None) -> None: ...

    def start_query(self) -> int: ...


@dataclass
class _Loading:
    """A page one thread is reading: others wait for ``done``."""

    thread: int
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Frame:
    page: Page
    pins: int = 0
    coded: Page | None = None  # the page as read, when ``page`` is its decoded image


class BufferPool:
    """Frames keyed by page id. Thread-safe; ``budget_bytes=None`` means unlimited."""

    def __init__(
        self,
        reader: PageReader,
        locate: Callable[[int], PageLocation],
        budget_bytes: int | None = None,
        policy: ReplacementPolicy | None = None,
        locate_blocks: Callable[[list[int]], dict[int, tuple[int, int]]] | None = None,
        image_bytes: int = 0,
    ) -> None:
        """``locate_blocks`` gives blocks' own (page id, slot), to find the bases of deltas;
        ``image_bytes`` bounds the image of a coded page (header plus page size)."""
        self._reader = reader
        self._locate = locate
        self._locate_blocks = locate_blocks
        self._image_bytes = image_bytes
        self.budget_bytes = budget_bytes
        self.policy = policy or LRUPolicy()
        self._frames: dict[int, _Frame] = {}
        self._resident_bytes = 0
        self._lock = threading.RLock()
        self._stats = PoolStats()
        self._assembled = AssembledArrays()
        self._coded: OrderedDict[int, Page] = OrderedDict()  # evicted images' pages as read
        self._loading: dict[int, _Loading] = {}
        self._read_ahead = ReadAhead(locate)
        self.recorder: RequestRecorder | None = None

    def pin(self, page_id: int, model: str | None = None) -> Page:
        """Return the page, resident and pinned until the matching ``unpin``.

        A miss is read, verified and decoded outside the pool's lock, so other threads pin
        resident pages, and load others, meanwhile (a page took the lock for a read's whole
        3 ms); a thread asking for a page another is loading waits for it, then finds it
        resident.
        """
        while True:
            with self._lock:
                frame = self._frames.get(page_id)
                if frame is not None:
                    self._requested(page_id, model, hit=True)
                    frame.pins += 1
                    return frame.page
                loading = self._loading.get(page_id)
                if loading is None:
                    self._requested(page_id, model, hit=False)
                    loading = self._loading[page_id] = _Loading(threading.get_ident())
                    break
            if loading.thread == threading.get_ident():
                raise RuntimeError(f"page {page_id} is needed to load itself")
            loading.done.wait()
        try:
            return self._load(page_id, model).page
        finally:
            with self._lock:
                del self._loading[page_id]
            loading.done.set()

    def prefetch(self, page_ids: Iterable[int], first: bool = False) -> None:
        """A request is about to pin ``page_ids`` in order (with ``first``, before the pages
        it was expected to pin): the missing ones are asked of storage a window at a time
        (``read_ahead``). Nothing enters the pool or its statistics until a page is pinned."""
        with self._lock:
            asked = self._read_ahead.expect(page_ids, self._absent, self._free(), first)
        self._reader.advise(asked)

    def _free(self) -> int | None:
        return None if self.budget_bytes is None else self.budget_bytes - self._resident_bytes

    def _absent(self, page_id: int) -> bool:
        return (
            page_id not in self._frames
            and page_id not in self._coded
            and page_id not in self._loading
        )

    def _requested(self, page_id: int, model: str | None, hit: bool) -> None:
        if self.recorder is not None:
            self.recorder.record(page_id, model)
        self.policy.on_request(page_id, model, hit=hit)
        if hit:
            self._stats.hits += 1
        else:
            self._stats.misses += 1

    def kept(
        self, key: Hashable, requested: Callable[[], Iterable[int]], model: str | None = None
    ) -> np.ndarray | None:
        """The array kept under ``key`` (``keep``), if any, counting a hit on each of the
        ``requested()`` pages: those that copying it afresh would have read (asked only when
        an array is kept)."""
        with self._lock:
            kept = self._assembled.get(key)
            if kept is None:
                return None
            for page_id in requested():
                self._requested(page_id, model, hit=True)
            return kept.array

    def has_room(self, pages: frozenset[int], nbytes: int) -> bool:
        """Whether ``keep`` would keep ``nbytes`` made from ``pages`` now: all of them are
        resident and the budget has that much room no page uses."""
        with self._lock:
            return self._has_room(pages, nbytes)

    def _has_room(self, pages: frozenset[int], nbytes: int) -> bool:
        fits = self.budget_bytes is None or self._resident_bytes + nbytes <= self.budget_bytes
        return fits and pages <= self._frames.keys()

    def keep(self, key: Hashable, pages: frozenset[int], array: np.ndarray) -> np.ndarray:
        """Keep ``array``, assembled from ``pages``, for later requests (``kept``) while all of
        them stay resident, if it fits beside them (see ``assembled`` module); returns it."""
        with self._lock:
            if self._has_room(pages, array.nbytes) and self._assembled.keep(key, array, pages):
                self._resident_bytes += array.nbytes
        return array

    def holds_at_once(self, page_ids: Iterable[int]) -> int:
        """How many of the largest of these pages the budget holds pinned at once."""
        if self.budget_bytes is None:
            return sys.maxsize
        largest = max((self._locate(page_id).length for page_id in page_ids), default=1)
        largest = max(largest, self._image_bytes)  # a coded page may decode to more
        return self.budget_bytes // max(1, largest)

    def begin_query(self, model: str) -> None:
        """A query of ``model`` starts (the engine calls this at every run of a prepared model,
        whichever path it came by): the policy and any recorder hear of it."""
        with self._lock:
            if self.recorder is not None:
                self.recorder.start_query()
            self.policy.on_query(model)

    def unpin(self, page_id: int) -> None:
        with self._lock:
            frame = self._frames[page_id]
            if frame.pins <= 0:
                raise RuntimeError(f"page {page_id} unpinned more often than pinned")
            frame.pins -= 1

    @contextmanager
    def pinned(self, page_id: int, model: str | None = None) -> Iterator[Page]:
        page = self.pin(page_id, model)
        try:
            yield page
        finally:
            self.unpin(page_id)

    def _load(self, page_id: int, model: str | None) -> _Frame:
        """Read (or take the kept coded copy of) and decode a page, then make room for it and
        insert it pinned; only the bookkeeping holds the lock."""
        with self._lock:
            read = self._coded.pop(page_id, None)
            if read is not None:
                self._resident_bytes -= read.nbytes
                self._stats.decoded_again += 1
        if read is None:
            location = self._locate(page_id)
            read = self._reader.read(location)
            with self._lock:
                self._stats.bytes_read += location.length
        page = decode_page(read, lambda entries: self.bases(entries, model)) if read.coded else read
        with self._lock:
            if self.budget_bytes is not None:
                self._evict_until(page.nbytes, page_id)
            frame = _Frame(page, pins=1, coded=read if read.coded else None)
            self._frames[page_id] = frame
            self._resident_bytes += page.nbytes
            self.policy.on_insert(page_id, page.nbytes)
            asked = self._read_ahead.arrived(page_id, self._absent, self._free())
        self._reader.advise(asked)
        return frame

    def bases(
        self, entries: list[BlockEntry], model: str | None = None
    ) -> dict[tuple[int, int], np.ndarray]:
        """The bases of the deltas among ``entries`` by (base id, order): each one's bytes laid
        out in that order, flat uint8 (see ``page_images.Bases``). Each base page is pinned
        once, however many of its blocks are bases here, as a request of ``model``: the model
        whose read decodes the deltas reads their bases too, and the policy must know it (the
        base pages of a family's fine-tunes are read by every one of them)."""
        wanted = {(entry.base, entry.order) for entry in entries if entry.base}
        where = self._where(sorted({base for base, _ in wanted}))
        by_page: dict[int, list[tuple[int, int]]] = {}
        for base, order in wanted:
            by_page.setdefault(where[base][0], []).append((base, order))
        found = {}
        for page_id, keys in by_page.items():
            with self.pinned(page_id, model) as page:
                for base, order in keys:
                    found[base, order] = _laid_out(page, where[base][1], order)
        return found

    def block_bytes(self, block_id: int, order: int) -> np.ndarray:
        """A block's bytes laid out in ``order`` (row- or column-major), flat uint8."""
        page_id, slot = self._where([block_id])[block_id]
        with self.pinned(page_id) as page:
            return _laid_out(page, slot, order)

    def _where(self, block_ids: list[int]) -> dict[int, tuple[int, int]]:
        if not block_ids:
            return {}
        if self._locate_blocks is None:
            raise RuntimeError("a delta needs its base but this pool cannot find blocks")
        return self._locate_blocks(block_ids)

    def _evict_until(self, incoming: int, page_id: int | None = None) -> None:
        """Make room for ``incoming`` more bytes: drop assembled copies, then evict the
        policy's victims (an image leaves its coded page behind), then drop coded pages."""
        assert self.budget_bytes is not None
        while self._resident_bytes + incoming > self.budget_bytes:
            freed = self._assembled.drop_oldest()
            if freed is not None:
                self._resident_bytes -= freed
                continue
            victim = self.policy.victim(lambda page: self._frames[page].pins == 0)
            if victim is None and self._coded:
                _, coded = self._coded.popitem(last=False)
                self._resident_bytes -= coded.nbytes
                continue
            if victim is None:
                held = self._resident_bytes
                raise BudgetExceededError(
                    f"buffer pool budget {format_size(self.budget_bytes)} is too small: "
                    f"page {page_id} needs {format_size(incoming)} while pinned pages "
                    f"hold {format_size(held)}; raise the budget to at least "
                    f"{held + incoming} bytes ({format_size(held + incoming)})"
                )
            self._evict(victim)
            self._stats.evictions += 1

    def _evict(self, page_id: int, keep_coded: bool = True) -> None:
        """Drop a frame; with ``keep_coded``, its page as read stays if smaller (see above)."""
        frame = self._frames.pop(page_id)
        self._resident_bytes -= frame.page.nbytes
        self._resident_bytes -= self._assembled.drop_page(page_id)
        self.policy.on_remove(page_id)
        if keep_coded and frame.coded is not None and frame.coded.nbytes < frame.page.nbytes:
            self._coded[page_id] = frame.coded
            self._resident_bytes += frame.coded.nbytes

    def discard(self, page_ids: set[int]) -> None:
        """Drop unpinned copies of pages that a layout change retired."""
        with self._lock:
            for page_id in page_ids & self._frames.keys():
                if self._frames[page_id].pins == 0:
                    self._evict(page_id, keep_coded=False)
            for page_id in page_ids & self._coded.keys():
                self._resident_bytes -= self._coded.pop(page_id).nbytes

    def clear(self) -> None:
        """Drop every unpinned page (closing a database frees its memory)."""
        with self._lock:
            self.discard(set(self._frames) | set(self._coded))

    def stats(self) -> PoolStats:
        with self._lock:
            snapshot = PoolStats(**vars(self._stats))
            snapshot.resident_pages = len(self._frames)
            snapshot.resident_bytes = self._resident_bytes
            snapshot.coded_bytes = sum(page.nbytes for page in self._coded.values())
            snapshot.pinned_pages = sum(1 for f in self._frames.values() if f.pins)
            snapshot.budget_bytes = self.budget_bytes
            return snapshot

    def resident(self) -> dict[int, int]:
        """Resident page ids and their pin counts (for tests and the stats tables)."""
        with self._lock:
            return {page_id: frame.pins for page_id, frame in self._frames.items()}


def _laid_out(page: Page, slot: int, order: int) -> np.ndarray:
    """Block ``slot`` of an image or raw page, its bytes in ``order``, flat uint8 (a view
    when it is stored so)."""
    entry = page.entries[slot]
    if entry.order == order:  # as stored: the common case, and the cheapest (bases of deltas)
        return np.frombuffer(page.data, np.uint8, entry.nbytes, entry.offset)
    block = page.block(slot)
    stored = block.T if order == COLUMN_MAJOR else block
    return np.ascontiguousarray(stored).view(np.uint8).reshape(-1)
