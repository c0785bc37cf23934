"""Rows of blocks, their copies and codings: what the writers of pages (import, repack,
compress) read and change, and what ``verify`` checks pages against."""

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping

from weightdb.storage.page_files import PageLocation


class BlockRows:
    """Block methods of the catalog (mixed into ``Catalog``)."""

    conn: sqlite3.Connection

    def blocks_with_digest(self, digest: bytes) -> list[tuple[int, int, int]]:
        """(block id, page id, slot) of every stored block with this content digest."""
        return self.conn.execute(
            "SELECT block_id, page_id, slot FROM blocks WHERE digest = ?", (digest,)
        ).fetchall()

    def insert_blocks(self, blocks: Iterable[tuple], codings: Iterable[tuple]) -> None:
        """Inside a transaction: new ``blocks`` rows (block id, digest, dtype, rows, cols,
        nbytes, page id, slot, refs) and their ``block_codings`` rows."""
        self.conn.executemany(
            "INSERT INTO blocks(block_id, digest, dtype, rows, cols, nbytes, page_id, slot, refs)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            list(blocks),
        )
        self.conn.executemany(
            "INSERT INTO block_codings(block_id, codec, base_block_id, stored_nbytes) "
            "VALUES (?, ?, ?, ?)",
            list(codings),
        )

    def add_references(self, refs: Mapping[int, int]) -> None:
        """Inside a transaction: ``refs`` more references to each existing block."""
        self.conn.executemany(
            "UPDATE blocks SET refs = refs + ? WHERE block_id = ?",
            [(count, block_id) for block_id, count in refs.items()],
        )

    def model_blocks(self) -> dict[str, list[int]]:
        """Every model's distinct block ids: the packing instance of the database. A model
        reading a delta reads its base too (``block_codings``)."""
        blocks: dict[str, set[int]] = defaultdict(set)
        for name, block_id, base in self.conn.execute(
            "SELECT m.name, tb.block_id, c.base_block_id FROM tensor_blocks tb "
            "JOIN tensors t USING (tensor_id) JOIN models m USING (model_id) "
            "LEFT JOIN block_codings c USING (block_id)"
        ):
            blocks[name].add(block_id)
            if base is not None:
                blocks[name].add(base)
        return {name: sorted(ids) for name, ids in sorted(blocks.items())}

    def pages_read(self) -> dict[str, dict[str, int]]:
        """Per model, the distinct pages it reads to load all of its weights, and their bytes
        (which include any foreign blocks those pages hold)."""
        rows = self.conn.execute(
            "SELECT m.name, COUNT(*), SUM(p.length) FROM (SELECT DISTINCT page_id, model_id "
            "FROM page_readers) JOIN pages p USING (page_id) JOIN models m USING (model_id) "
            "GROUP BY m.name ORDER BY m.name"
        ).fetchall()
        return {name: {"pages": pages, "bytes": nbytes} for name, pages, nbytes in rows}

    def copied_block_count(self) -> int:
        """Blocks some model reads from a page other than the block's own."""
        return self.conn.execute("SELECT COUNT(DISTINCT block_id) FROM block_copies").fetchone()[0]

    def models_in_order(self) -> list[tuple[int, str, bytes | None]]:
        """(model id, name, graph) of every model, in import order."""
        return self.conn.execute(
            "SELECT model_id, name, graph FROM models ORDER BY model_id"
        ).fetchall()

    def tensor_grid(self, tensor_id: int) -> dict[tuple[int, int], int]:
        """(block row, block col) -> block id of one tensor."""
        return {
            (i, j): block_id
            for i, j, block_id in self.conn.execute(
                "SELECT block_row, block_col, block_id FROM tensor_blocks WHERE tensor_id = ?",
                (tensor_id,),
            )
        }

    def delta_bases(self, model_id: int) -> list[int]:
        """The bases of the model's delta-coded blocks, by id."""
        return [
            base
            for (base,) in self.conn.execute(
                "SELECT DISTINCT c.base_block_id FROM block_codings c JOIN tensor_blocks tb "
                "USING (block_id) JOIN tensors t USING (tensor_id) "
                "WHERE t.model_id = ? AND c.base_block_id IS NOT NULL ORDER BY 1",
                (model_id,),
            )
        ]

    def block_places(self) -> dict[int, tuple[str, int, int, int, int, int]]:
        """Block id -> (dtype, rows, cols, nbytes, page id, slot) of its own copy."""
        return {
            block_id: tuple(rest)
            for block_id, *rest in self.conn.execute(
                "SELECT block_id, dtype, rows, cols, nbytes, page_id, slot FROM blocks"
            )
        }

    def coded_block_ids(self) -> set[int]:
        return {block for (block,) in self.conn.execute("SELECT block_id FROM block_codings")}

    def live_slots(self) -> set[tuple[int, int]]:
        """(page id, slot) of every block and every copy some model reads."""
        return set(
            self.conn.execute(
                "SELECT page_id, slot FROM blocks UNION SELECT page_id, slot FROM block_copies"
            )
        )

    def blocks_on_page(self, page_id: int) -> list[tuple]:
        """(block id, slot, nbytes, digest, dtype, rows, cols) of every block and copy the
        catalog places on a page."""
        return self.conn.execute(
            "SELECT block_id, slot, nbytes, digest, dtype, rows, cols FROM blocks "
            "WHERE page_id = ? UNION "
            "SELECT block_id, c.slot, b.nbytes, b.digest, b.dtype, b.rows, b.cols "
            "FROM block_copies c JOIN blocks b USING (block_id) WHERE c.page_id = ?",
            (page_id, page_id),
        ).fetchall()

    def block_readers(self, block_id: int, limit: int) -> list[tuple[str, str]]:
        """(model, tensor) pairs that hold a block, at most ``limit``."""
        return self.conn.execute(
            "SELECT DISTINCT m.name, t.name FROM tensor_blocks tb "
            "JOIN tensors t USING (tensor_id) JOIN models m USING (model_id) "
            "WHERE tb.block_id = ? ORDER BY m.name, t.name LIMIT ?",
            (block_id, limit),
        ).fetchall()

    def place_blocks(
        self,
        new_pages: list[PageLocation],
        primaries: Iterable[tuple[int, int, int]],
        copies: Iterable[tuple[int, int, int, int]],
        old_pages: Iterable[int],
    ) -> None:
        """Inside a transaction: a repack's new layout. Blocks move to their primary (page id,
        slot, block id), copy rows (model id, block id, page id, slot) are replaced, the old
        pages retired, and every model's digests recorded anew."""
        self.insert_pages(new_pages)
        self.conn.executemany(
            "UPDATE blocks SET page_id = ?, slot = ? WHERE block_id = ?", list(primaries)
        )
        self.conn.execute("DELETE FROM block_copies")
        self.conn.executemany(
            "INSERT INTO block_copies(model_id, block_id, page_id, slot) VALUES (?, ?, ?, ?)",
            list(copies),
        )
        self._finish_relayout(old_pages)

    def set_stored_bytes(self, rows: Iterable[tuple[int, int]]) -> None:
        """Inside a transaction: coded blocks' stored bytes, rows of (bytes, block id), after a
        repack coded them again in their new pages' streams."""
        self.conn.executemany(
            "UPDATE block_codings SET stored_nbytes = ? WHERE block_id = ?", list(rows)
        )

    def move_slots(
        self,
        new_pages: list[PageLocation],
        moved: Mapping[tuple[int, int], tuple[int, int]],
        codings: Iterable[tuple[int, int, int | None, int]],
        old_pages: Iterable[int],
    ) -> None:
        """Inside a transaction: a compress's rewrite. Blocks and copies move from (old page,
        slot) to (new page, slot), ``block_codings`` is replaced by ``codings``, the old pages
        retired, and every model's digests recorded anew."""
        self.insert_pages(new_pages)
        for table in ("blocks", "block_copies"):  # our own table names, not user text
            self.conn.executemany(
                f"UPDATE {table} SET page_id = ?, slot = ? WHERE page_id = ? AND slot = ?",
                [(*new, *old) for old, new in moved.items()],
            )
        self.conn.execute("DELETE FROM block_codings")
        self.conn.executemany(
            "INSERT INTO block_codings(block_id, codec, base_block_id, stored_nbytes) "
            "VALUES (?, ?, ?, ?)",
            list(codings),
        )
        self._finish_relayout(old_pages)

    def _finish_relayout(self, old_pages: Iterable[int]) -> None:
        self.retire_pages(old_pages)
        self.bump_layout_generation()
        self.record_digests(self.model_ids().values())
