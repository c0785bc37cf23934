"""A stored tensor as the engine and export see it: a grid of blocks read through the pool."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from math import prod

import numpy as np
from numpy.lib.stride_tricks import as_strided

from weightdb.storage.assembled import anonymous_array
from weightdb.storage.blocking import BlockLayout
from weightdb.storage.buffer_pool import BufferPool
from weightdb.storage.page_format import COLUMN_MAJOR, ROW_MAJOR, Page
from weightdb.storage.panel_order import PanelAxis

# Gathers from pages before a table is copied whole: copying the budgets family's 168 MB table
# costs about as much as 16 to 30 of its gathers save (measured 0.3-0.6 s against 15 ms each
# when gathers went block row by block row), so a model asked a few times only keeps its pages.
TABLE_COPY_AFTER = 16


@dataclass
class StoredTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: BlockLayout
    locations: np.ndarray  # (grid rows, grid cols, 2): page id and slot of each block
    pool: BufferPool
    model: str | None = None  # who to charge page requests to
    _runs: dict[tuple[str, int], tuple[int, range] | None] = field(
        default_factory=dict, init=False, repr=False
    )  # panel -> (page, slots) or None, from ``locations``: never shared by copies
    _pins_at_once: int | None = field(default=None, init=False, repr=False)
    _gathers: int = field(default=0, init=False, repr=False)  # from pages, while not kept
    _panel_sources: dict[tuple[str, int], tuple[tuple, frozenset[int]]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @contextmanager
    def block(self, i: int, j: int) -> Iterator[np.ndarray]:
        """Block (i, j) of the matrix view, pinned while the ``with`` body runs; ``layout``
        gives the grid and each block's bounds (narrow matrices get taller blocks)."""
        grid_rows, grid_cols = self.layout.grid
        if not (0 <= i < grid_rows and 0 <= j < grid_cols):
            raise IndexError(
                f"block ({i}, {j}) is outside tensor {self.name!r}: its "
                f"{'x'.join(map(str, self.layout.matrix_shape))} matrix view is a grid of "
                f"{grid_rows} x {grid_cols} blocks of {self.layout.block_rows}x"
                f"{self.layout.block_cols}, so i < {grid_rows} and j < {grid_cols}"
            )
        page_id, slot = (int(x) for x in self.locations[i, j])
        with self.pool.pinned(page_id, self.model) as page:
            yield page.block(slot)

    def pages(self) -> list[int]:
        """The pages holding this tensor's blocks, in the order of its first block on each."""
        return list(dict.fromkeys(self.locations[..., 0].ravel().tolist()))

    def pins_at_once(self) -> int:
        """How many of this tensor's pages its pool can hold pinned at once: the engine's
        workers multiply by several panels at a time only if they all fit."""
        if self._pins_at_once is None:
            self._pins_at_once = self.pool.holds_at_once(
                set(self.locations[..., 0].ravel().tolist())
            )
        return self._pins_at_once

    def _run(self, axis: PanelAxis, index: int) -> tuple[int, range] | None:
        """The page and slots of panel ``index`` if its blocks lie back to back on one page."""
        key = (axis, index)
        if key not in self._runs:
            grid = self.locations[:, index] if axis == "columns" else self.locations[index]
            page_id, first = (int(v) for v in grid[0])
            slots = range(first, first + len(grid))
            same_page = bool((grid[:, 0] == page_id).all())
            in_order = bool((grid[:, 1] == np.arange(slots.start, slots.stop)).all())
            self._runs[key] = (page_id, slots) if same_page and in_order else None
        return self._runs[key]

    def panel_groups(self, axis: PanelAxis, indices: Sequence[int]) -> list[list[int]]:
        """The panels grouped by the page that holds each, in order of first appearance; a
        panel not stored back to back is a group of its own."""
        by_page: dict[int, list[int]] = {}
        groups = []
        for index in indices:
            run = self._run(axis, index)
            if run is None:
                groups.append([index])
            elif run[0] in by_page:
                by_page[run[0]].append(index)
            else:
                by_page[run[0]] = [index]
                groups.append(by_page[run[0]])
        return groups

    @contextmanager
    def panels(self, axis: PanelAxis, group: list[int]) -> Iterator[list[np.ndarray]]:
        """The panels of one ``panel_groups`` group, each a C-contiguous (K, width) array: a
        view of its page (block rows as their transpose) when its blocks lie back to back, all
        pinned by one pin; else a copy of its blocks, which the pool keeps while its pages are
        resident and the budget has room (``BufferPool.keep``)."""
        runs = [self._run(axis, index) for index in group]
        if runs[0] is not None:
            order = ROW_MAJOR if axis == "columns" else COLUMN_MAJOR
            with self.pool.pinned(runs[0][0], self.model) as page:
                views = [page.run(slots, order) for _, slots in runs]
                if all(view is not None for view in views):
                    yield views
                    return
            for index in group:  # back to back, but in the other order: copy from now on
                self._runs[axis, index] = None
        yield [self._assembled_panel(axis, index) for index in group]

    def _assembled_panel(self, axis: PanelAxis, index: int) -> np.ndarray:
        key, pages = self._panel_source(axis, index)
        kept = self.pool.kept(key, lambda: sorted(pages), self.model)
        if kept is not None:
            return kept
        inner = self.layout.matrix_shape[0 if axis == "columns" else 1]
        if axis == "columns":
            _, _, c0, c1 = self.layout.bounds(0, index)
            panel = self._copy_buffer((inner, c1 - c0))
            self.region((0, inner), (c0, c1), self.dtype, out=panel)
        else:
            r0, r1, _, _ = self.layout.bounds(index, 0)
            panel = self._copy_buffer((inner, r1 - r0))
            panel[...] = self.region((r0, r1), (0, inner), self.dtype).T
        return self.pool.keep(key, pages, panel)

    def _copy_buffer(self, shape: tuple[int, int]) -> np.ndarray:
        """Memory for a panel's copy: a mapping of its own if the budget has room to keep it
        (``anonymous_array``), else from the heap, where the copy made for the next product
        reuses it: a fresh mapping costs its page faults on every product (at the budgets
        family's 10%, where the pool has no room to keep one, 1,310 mappings took 1.0 s of the
        32 requests' 8.1 s)."""
        room = self.pool.has_room(frozenset(), prod(shape) * self.itemsize)  # bytes only
        return anonymous_array(shape, self.dtype) if room else np.empty(shape, self.dtype)

    def _panel_source(self, axis: PanelAxis, index: int) -> tuple[tuple, frozenset[int]]:
        """The pool's key for a copy of panel ``index`` (the blocks it holds, so models that
        share them share the copy) and the pages it comes from, derived once."""
        found = self._panel_sources.get((axis, index))
        if found is None:
            grid = self.locations[:, index] if axis == "columns" else self.locations[index]
            found = (axis, self.dtype.str, grid.tobytes()), frozenset(grid[:, 0].tolist())
            self._panel_sources[axis, index] = found
        return found

    def resident_matrix(self, rows: np.ndarray) -> np.ndarray | None:
        """The whole matrix view as one array if the pool keeps one (``BufferPool.keep``), or
        can now: after ``TABLE_COPY_AFTER`` gathers, every page of this tensor resident and
        room for the copy beside them. A gather of ``rows`` then takes them in one step; the
        pages holding them count as requested, as the gather would read them."""
        key, pages = self._matrix_source

        def requested() -> list[int]:
            block_rows = np.unique(rows // self.layout.block_rows)
            return np.unique(self.locations[block_rows, :, 0]).tolist()

        kept = self.pool.kept(key, requested, self.model)
        if kept is not None:
            return kept
        self._gathers += 1
        if self._gathers < TABLE_COPY_AFTER or not self.pool.has_room(pages, self.nbytes):
            return None
        matrix_rows, cols = self.layout.matrix_shape
        matrix = anonymous_array((matrix_rows, cols), self.dtype)
        self.region((0, matrix_rows), (0, cols), self.dtype, out=matrix)
        return self.pool.keep(key, pages, matrix)

    @cached_property
    def _matrix_source(self) -> tuple[tuple, frozenset[int]]:
        """The pool's key for a copy of the whole matrix view and the pages it comes from."""
        return ("matrix", self.dtype.str, self.locations.tobytes()), frozenset(self.pages())

    def take_rows(self, ids: np.ndarray) -> np.ndarray:
        """W[ids] for valid row ids of the matrix view, as a (len(ids), columns) array.

        A block's row is a run of evenly spaced elements of its page (adjacent in a row-major
        block), so the rows are gathered page by page, one ``take`` per page and block width
        under one pin, where a Python step per block row or per block cost an embedding bag over
        a fine-tune's table (blocks on many pages) 20 ms a request.
        """
        layout = self.layout
        width, count = layout.block_cols, layout.grid[1]
        full = layout.matrix_shape[1] // width  # block columns of the full width
        out = np.empty((ids.size, layout.matrix_shape[1]), self.dtype)
        by_block = out[:, : full * width].reshape(ids.size, full, width)  # a view
        block_of = ids // layout.block_rows
        where = self.locations[block_of].reshape(-1, 2)  # (id, block column) pairs
        order = np.argsort(where[:, 0], kind="stable")
        page_ids = where[order, 0]
        requests = np.repeat(np.arange(ids.size), count)[order]
        columns = np.tile(np.arange(count), ids.size)[order]
        blocks_i = block_of[requests]
        rows = ids[requests] - blocks_i * layout.block_rows
        edges = [*np.flatnonzero(np.diff(page_ids, prepend=-1)).tolist(), order.size]
        self.pool.prefetch(page_ids[edges[:-1]].tolist(), first=True)
        for a, b in pairwise(edges):
            with self.pool.pinned(int(page_ids[a]), self.model) as page:
                elements = np.frombuffer(page.data, self.dtype, len(page.data) // self.itemsize)
                start, row_step, col_step = self._segments(page, blocks_i[a:b], columns[a:b])
                first = start + rows[a:b] * row_step
                wide = columns[a:b] < full
                if wide.all():
                    taken = _runs(elements, first, col_step, width)
                    if full == count:  # rows of ``out`` are whole blocks' rows: one flat index
                        out.reshape(-1, width)[order[a:b]] = taken
                    else:
                        by_block[requests[a:b], columns[a:b]] = taken
                    continue
                narrow = ~wide
                if wide.any():
                    taken = _runs(elements, first[wide], col_step[wide], width)
                    by_block[requests[a:b][wide], columns[a:b][wide]] = taken
                taken = _runs(
                    elements, first[narrow], col_step[narrow], out.shape[1] - full * width
                )
                out[requests[a:b][narrow], full * width :] = taken
        return out

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def _segments(
        self, page: Page, i: np.ndarray, j: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For blocks (i, j) on ``page``: the element where each starts and the steps between
        its rows and between its columns (``Page.strides``)."""
        found = page.strides[self.locations[i, j, 1]]
        return found[:, 0], found[:, 1], found[:, 2]

    def region(
        self,
        rows: tuple[int, int],
        cols: tuple[int, int],
        dtype: np.dtype,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rows [r0, r1) x cols [c0, c1) of the matrix view, copied out of the blocks that cover
        it as one contiguous array of ``dtype`` (into ``out``, of that shape, if given). The
        blocks are taken page by page, each page pinned once for the copies it serves, so the
        pool holds at most one page of this tensor on our behalf."""
        (r0, r1), (c0, c1) = rows, cols
        block_rows, block_cols = self.layout.block_rows, self.layout.block_cols
        if out is None:
            out = np.empty((r1 - r0, c1 - c0), dtype=dtype)
        grid = self.locations[
            r0 // block_rows : -(-r1 // block_rows), c0 // block_cols : -(-c1 // block_cols)
        ]
        by_page: dict[int, list[tuple[int, int, int]]] = {}
        for (di, dj), (page_id, slot) in zip(
            np.ndindex(grid.shape[:2]), grid.reshape(-1, 2).tolist(), strict=True
        ):
            by_page.setdefault(page_id, []).append(
                (r0 // block_rows + di, c0 // block_cols + dj, slot)
            )
        for page_id, blocks in by_page.items():
            with self.pool.pinned(page_id, self.model) as page:
                for i, j, slot in blocks:
                    br0, br1, bc0, bc1 = self.layout.bounds(i, j)
                    lo_r, hi_r, lo_c, hi_c = max(r0, br0), min(r1, br1), max(c0, bc0), min(c1, bc1)
                    out[lo_r - r0 : hi_r - r0, lo_c - c0 : hi_c - c0] = page.block(slot)[
                        lo_r - br0 : hi_r - br0, lo_c - bc0 : hi_c - bc0
                    ]
        return out

    def row_bands(self) -> Iterator[np.ndarray]:
        """The matrix view one block row at a time, so a huge tensor is never held whole."""
        grid_rows, grid_cols = self.layout.grid
        cols = self.layout.matrix_shape[1]
        for i in range(grid_rows):
            r0, r1, _, _ = self.layout.bounds(i, 0)
            band = np.empty((r1 - r0, cols), dtype=self.dtype)
            for j in range(grid_cols):
                _, _, c0, c1 = self.layout.bounds(i, j)
                with self.block(i, j) as block:
                    band[:, c0:c1] = block
            yield band

    def read(self) -> np.ndarray:
        """The whole tensor as an ordinary array."""
        matrix = np.empty(self.layout.matrix_shape, dtype=self.dtype)
        row = 0
        for band in self.row_bands():
            matrix[row : row + band.shape[0]] = band
            row += band.shape[0]
        return matrix.reshape(self.shape)


def _runs(elements: np.ndarray, first: np.ndarray, step: np.ndarray, width: int) -> np.ndarray:
    """Row k: ``width`` elements of ``elements`` from ``first[k]``, ``step[k]`` apart.

    Rows of row-major blocks (step 1) whose starts are a whole number of rows apart, as blocks
    of whole rows lie on a page, are rows of one (n, width) view: a plain ``take``. Other runs of
    step 1 are rows of a view of overlapping windows; the rest are indexed one by one.
    """
    if (step == 1).all():
        offset = int(first[0]) % width
        if (first % width == offset).all():
            whole = (elements.size - offset) // width * width
            rows = elements[offset : offset + whole].reshape(-1, width)
            return np.take(rows, (first - offset) // width, axis=0)
        windows = as_strided(
            elements,
            (elements.size - width + 1, width),
            (elements.itemsize, elements.itemsize),
            writeable=False,
        )
        return windows[first]
    return elements[first[:, None] + np.arange(width) * step[:, None]]
