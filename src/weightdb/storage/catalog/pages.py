"""Rows of pages: where each lives, who reads it, and how pages leave use.

Pages leave use by being retired, not deleted: whoever planned a read on them before the commit
can still make it, and a later writer deletes their files once the grace period has passed.
A page is in use while a block lives on it or a model reads a copy of a block from it
(``block_copies``). A copy row is valid only while its model uses the block: every write that
takes blocks away from models (removing a model, committing a dedup plan) ends with
``reclaim_unreferenced``, which drops the copies that no longer hold.
"""

import sqlite3
import time
from collections.abc import Iterable

from weightdb.errors import WeightDBError
from weightdb.storage.page_files import PageLocation


class PageRows:
    """Page methods of the catalog (mixed into ``Catalog``)."""

    conn: sqlite3.Connection

    def page_location(self, page_id: int) -> PageLocation:
        """Where a live or retired page is stored."""
        row = self.conn.execute(
            "SELECT page_id, file, offset, length, checksum FROM pages WHERE page_id = ? "
            "UNION ALL SELECT page_id, file, offset, length, checksum FROM retired_pages "
            "WHERE page_id = ?",
            (page_id, page_id),
        ).fetchone()
        if row is None:
            raise WeightDBError(f"page {page_id} is not in the catalog")
        return PageLocation(*row)

    def block_homes(self, block_ids: list[int]) -> dict[int, tuple[int, int]]:
        """Blocks' own page and slot (where the bases of deltas are read)."""
        found = {}
        for start in range(0, len(block_ids), 500):  # under SQLite's parameter limit
            chunk = block_ids[start : start + 500]
            found |= {
                block_id: (page_id, slot)
                for block_id, page_id, slot in self.conn.execute(
                    "SELECT block_id, page_id, slot FROM blocks WHERE block_id IN "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                )
            }
        missing = set(block_ids) - found.keys()
        if missing:
            raise WeightDBError(
                f"blocks {sorted(missing)[:5]} are not in the catalog; the database is damaged"
            )
        return found

    def page_bytes(self) -> int:
        """The bytes of every live page: what a pool holding all of them needs."""
        return self.conn.execute("SELECT COALESCE(SUM(length), 0) FROM pages").fetchone()[0]

    def page_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM pages").fetchone()[0]

    def live_pages(self) -> list[tuple[int, int]]:
        """(page id, length) of every live page, by id."""
        return self.conn.execute("SELECT page_id, length FROM pages ORDER BY page_id").fetchall()

    def page_models(self, page_id: int) -> list[str]:
        """Names of the models that read a block from this page."""
        rows = self.conn.execute(
            "SELECT DISTINCT m.name FROM page_readers r JOIN models m USING (model_id) "
            "WHERE r.page_id = ? ORDER BY m.name",
            (page_id,),
        ).fetchall()
        return [name for (name,) in rows]

    def model_pages(self, model_id: int) -> frozenset[int]:
        """The pages a model reads a block from."""
        rows = self.conn.execute(
            "SELECT DISTINCT page_id FROM page_readers WHERE model_id = ?", (model_id,)
        )
        return frozenset(page for (page,) in rows)

    def sharing_degrees(self, page_ids: list[int]) -> dict[int, int]:
        """Page id -> how many models read a block from it, for ``page_ids``."""
        degrees: dict[int, int] = {}
        for start in range(0, len(page_ids), 500):  # under SQLite's parameter limit
            chunk = page_ids[start : start + 500]
            degrees |= dict(
                self.conn.execute(  # only "?" placeholders are formatted in
                    "SELECT page_id, COUNT(DISTINCT model_id) FROM page_readers "
                    f"WHERE page_id IN ({', '.join('?' * len(chunk))}) GROUP BY page_id",
                    chunk,
                )
            )
        return degrees

    def forget_retired(self, before: float) -> None:
        """Delete the rows of pages retired before ``before`` (seconds since the epoch) that
        no live reader's snapshot may still read (``leases.py``), and expired leases."""
        with self.transaction():
            now = time.time()
            self.conn.execute("DELETE FROM reader_leases WHERE expires_at <= ?", (now,))
            oldest = self.oldest_snapshot()
            self.conn.execute(
                "DELETE FROM retired_pages WHERE retired_at < ? AND retired_at <= ?",
                (before, now if oldest is None else oldest),
            )

    def referenced_files(self) -> set[str]:
        """Page files a live or retired page is stored in."""
        return {
            f
            for (f,) in self.conn.execute(
                "SELECT file FROM pages UNION SELECT file FROM retired_pages"
            )
        }

    def next_block_and_page_ids(self) -> tuple[int, int]:
        """Ids no block and no (live or retired) page has; valid under the writer lock."""
        block = self.conn.execute("SELECT COALESCE(MAX(block_id), 0) + 1 FROM blocks").fetchone()[0]
        page = self.conn.execute(
            "SELECT MAX(p) + 1 FROM (SELECT COALESCE(MAX(page_id), 0) AS p FROM pages "
            "UNION ALL SELECT COALESCE(MAX(page_id), 0) FROM retired_pages)"
        ).fetchone()[0]
        return block, page

    def insert_pages(self, pages: Iterable[PageLocation]) -> None:
        """Inside a transaction: new live pages."""
        self.conn.executemany(
            "INSERT INTO pages(page_id, file, offset, length, checksum) VALUES (?, ?, ?, ?, ?)",
            [(p.page_id, p.file, p.offset, p.length, p.checksum) for p in pages],
        )

    def retire_pages(self, page_ids: Iterable[int]) -> None:
        """Inside a transaction: move pages out of use, readable for a grace period."""
        now = time.time()
        page_ids = list(page_ids)
        self.conn.executemany(
            "INSERT INTO retired_pages(page_id, file, offset, length, checksum, retired_at) "
            "SELECT page_id, file, offset, length, checksum, ? FROM pages WHERE page_id = ?",
            [(now, page_id) for page_id in page_ids],
        )
        self.conn.executemany("DELETE FROM pages WHERE page_id = ?", [(p,) for p in page_ids])

    def reclaim_unreferenced(self) -> set[int]:
        """Inside a transaction: delete blocks with no references and copies their model no
        longer uses, and retire pages that neither a block nor a copy is on.

        Returns the retired page ids (a partly used page stays until a repack rewrites it).
        """
        self.conn.execute(
            "DELETE FROM block_copies WHERE NOT EXISTS (SELECT 1 FROM tensor_blocks tb "
            "JOIN tensors t USING (tensor_id) WHERE tb.block_id = block_copies.block_id "
            "AND t.model_id = block_copies.model_id)"
        )
        # A delta's base outlives its references while the delta lives (``block_codings``); the
        # second pass frees the bases whose last deltas the first one deleted (one level only).
        for _ in range(2):
            self.conn.execute(
                "DELETE FROM blocks WHERE refs <= 0 AND NOT EXISTS "
                "(SELECT 1 FROM block_codings c WHERE c.base_block_id = blocks.block_id)"
            )
        empty = {
            page_id
            for (page_id,) in self.conn.execute(
                "SELECT page_id FROM pages WHERE page_id NOT IN (SELECT page_id FROM blocks) "
                "AND page_id NOT IN (SELECT page_id FROM block_copies)"
            )
        }
        self.retire_pages(empty)
        return empty
