"""Digests over the catalog rows that decide what a model reads, checked before it is read.

Pages carry checksums, but one changed value in the rows that map a model onto them (a dtype,
a block id, a slot) would return wrong weights with no error. So every tensor has a digest
over its row and its block map: each position's block id, the block's content digest, dtype
and shape, and the page and slot the model reads it from. Every model has a digest over its
own row (format, graph, metadata) and its tensors' digests in order. Page rows need none: a
page's header names its page id and its checksum covers its bytes.

A writer records the digests in the transaction that changes the rows (``record_digests``, or
``rewriting`` for rows that already have digests, which it checks first so that no write
blesses damage). A reader checks the model row before using the graph (``check_model``) and
the whole map in the rows it reads the weights' places from (``checked_block_rows``): one
indexed query and a hash, about 3 us a block (0.2 s for 65,536 blocks, which at 128x128
float32 hold 4 GiB to be read).

Catalogs of version 1 (before digests) are migrated when first opened, by any process: one
transaction records every model's digests and sets version 2 (``record_missing_digests``).
From then on a model without a digest is damage, not something to read unchecked: deleting a
digest row must not switch the check off.
"""

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from weightdb.errors import CatalogCorruptError

RESTORE = (
    "restore catalog.sqlite from a backup, or remove the model (`weightdb rm`) and import it again"
)


@dataclass(frozen=True)
class Damage:
    """A model whose rows do not match their digests (or that has none); ``tensor`` is None
    for the model row."""

    model: str
    tensor: str | None

    def __str__(self) -> str:
        tensor = "" if self.tensor is None else f" tensor {self.tensor!r}"
        return f"model {self.model!r}{tensor}"


class DigestRows:
    """Digest methods of the catalog (mixed into ``Catalog``)."""

    conn: "sqlite3.Connection"

    def _tensor_digests(self, model_id: int) -> list[tuple[int, str, bytes]]:
        """(tensor id, name, digest) of each tensor of the model, in source order, from its rows."""
        return self._mapped_tensors(model_id)[0]

    def _mapped_tensors(self, model_id: int) -> tuple[list[tuple[int, str, bytes]], list[tuple]]:
        """``_tensor_digests`` and the block rows they were computed from: (tensor id, block
        row, block col, block id, block digest, dtype, rows, cols, nbytes, page id, slot), in
        tensor and then block order."""
        maps: dict = {}  # tensor id -> its running sha256
        tensors = []
        for row in self.conn.execute(
            "SELECT tensor_id, position, name, dtype, shape, block_rows, block_cols, nbytes "
            "FROM tensors WHERE model_id = ? ORDER BY position, tensor_id",
            (model_id,),
        ):
            maps[row[0]] = hashlib.sha256(repr(row[1:]).encode())
            tensors.append((row[0], row[2]))
        blocks = self.conn.execute(
            "SELECT tb.tensor_id, tb.block_row, tb.block_col, tb.block_id, b.digest, b.dtype, "
            "b.rows, b.cols, b.nbytes, COALESCE(c.page_id, b.page_id), COALESCE(c.slot, b.slot) "
            "FROM tensors t JOIN tensor_blocks tb USING (tensor_id) JOIN blocks b USING (block_id) "
            "LEFT JOIN block_copies c ON c.model_id = t.model_id AND c.block_id = tb.block_id "
            "WHERE t.model_id = ? ORDER BY tb.tensor_id, tb.block_row, tb.block_col",
            (model_id,),
        ).fetchall()  # one call: stepping the cursor costs a Python call per block
        for tensor_id, *block in blocks:
            maps[tensor_id].update(repr(block).encode())
        digests = [(tensor_id, name, maps[tensor_id].digest()) for tensor_id, name in tensors]
        return digests, blocks

    def _model_digest(self, model_id: int, tensor_digests: Iterable[bytes]) -> bytes:
        (row,) = self.conn.execute(
            "SELECT name, format, graph, metadata FROM models WHERE model_id = ?", (model_id,)
        ).fetchall()
        digest = hashlib.sha256(repr(row).encode())
        for tensor_digest in tensor_digests:
            digest.update(tensor_digest)
        return digest.digest()

    def _stored(self, model_id: int) -> tuple[bytes | None, dict[int, bytes]]:
        """The model's recorded digest (None if it has none yet) and its tensors' digests."""
        row = self.conn.execute(
            "SELECT digest FROM model_digests WHERE model_id = ?", (model_id,)
        ).fetchone()
        tensors = dict(
            self.conn.execute(
                "SELECT d.tensor_id, d.digest FROM tensor_digests d "
                "JOIN tensors t USING (tensor_id) WHERE t.model_id = ?",
                (model_id,),
            )
        )
        return (row[0] if row else None), tensors

    def record_digests(self, model_ids: Iterable[int]) -> None:
        """Inside the transaction that wrote these models' rows: record their digests."""
        for model_id in model_ids:
            tensors = self._tensor_digests(model_id)
            self.conn.executemany(
                "INSERT OR REPLACE INTO tensor_digests(tensor_id, digest) VALUES (?, ?)",
                [(tensor_id, digest) for tensor_id, _, digest in tensors],
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO model_digests(model_id, digest) VALUES (?, ?)",
                (model_id, self._model_digest(model_id, (d for _, _, d in tensors))),
            )

    def record_missing_digests(self) -> None:
        """Inside the transaction that migrates a catalog of version 1: record every digest."""
        self.record_digests(
            [
                model_id
                for (model_id,) in self.conn.execute(
                    "SELECT model_id FROM models WHERE model_id NOT IN "
                    "(SELECT model_id FROM model_digests)"
                ).fetchall()
            ],
        )

    def refuse_damaged(self, model_ids: Iterable[int] | None = None) -> None:
        """Before a change to existing models' rows (all models when ``model_ids`` is None): raise
        if any no longer matches its digests, so damage is reported, not recorded as right (and a
        writer does no work on it)."""
        if model_ids is None:
            model_ids = [m for (m,) in self.conn.execute("SELECT model_id FROM models")]
        damage = [d for model_id in model_ids for d in self._damage(model_id)]
        if damage:
            raise CatalogCorruptError(
                f"the catalog rows of {damage[0]} do not match their digest, so nothing was "
                f"changed; run `weightdb verify` for the full list, then {RESTORE}"
            )

    @contextmanager
    def rewriting(self, model_ids: Iterable[int]) -> Iterator[None]:
        """Around a change to existing models' rows, inside its transaction: check their digests
        first (``refuse_damaged``), record the new ones after."""
        model_ids = list(model_ids)
        self.refuse_damaged(model_ids)
        yield
        self.record_digests(model_ids)

    def _damage(
        self, model_id: int, tensors: list[tuple[int, str, bytes]] | None = None
    ) -> list[Damage]:
        """What of the model no longer matches its digests (``tensors``: its tensors' digests
        from ``_mapped_tensors``, if already computed)."""
        recorded, recorded_tensors = self._stored(model_id)
        (name,) = self.conn.execute(
            "SELECT name FROM models WHERE model_id = ?", (model_id,)
        ).fetchone()
        if recorded is None:
            return [Damage(name, None)]
        if tensors is None:
            tensors = self._tensor_digests(model_id)
        damage = [
            Damage(name, tensor)
            for tensor_id, tensor, digest in tensors
            if recorded_tensors.get(tensor_id) != digest
        ]
        if self._model_digest(model_id, (d for _, _, d in tensors)) != recorded and not damage:
            damage.append(Damage(name, None))
        return damage

    def _model_row_matches(self, model_id: int) -> bool:
        recorded, tensors = self._stored(model_id)
        order = self.conn.execute(
            "SELECT tensor_id FROM tensors WHERE model_id = ? ORDER BY position, tensor_id",
            (model_id,),
        ).fetchall()
        return self._model_digest(model_id, (tensors.get(t, b"") for (t,) in order)) == recorded

    # Readers run outside transactions, so in WAL mode each query sees the latest commit: a writer
    # may commit between the queries of one check. Only damage a second look confirms is reported.

    def check_model(self, model_id: int) -> None:
        """Before using a model's graph or metadata: its row and tensor list are as recorded.
        Reads no block rows, so it is cheap even for a model of a million blocks."""
        if not self._model_row_matches(model_id) and not self._model_row_matches(model_id):
            self._report(self._damage(model_id))

    def checked_block_rows(self, model_id: int) -> list[tuple]:
        """Before reading a model's weights: the rows that map them (``_mapped_tensors``), once
        they are checked against the digests. The check and the reader use the same rows, so
        no commit can come between them."""
        tensors, blocks = self._mapped_tensors(model_id)
        if self._damage(model_id, tensors):  # a second look: only damage it confirms counts
            tensors, blocks = self._mapped_tensors(model_id)
            self._report(self._damage(model_id, tensors))
        return blocks

    @staticmethod
    def _report(damage: list[Damage]) -> None:
        """Raise naming the first damage found, if any."""
        if damage:
            raise CatalogCorruptError(
                f"the catalog rows of {damage[0]} do not match their digest: catalog.sqlite was "
                f"changed outside weightdb or is damaged; run `weightdb verify` for the full "
                f"list, then {RESTORE}"
            )

    def digest_damage(self) -> list[Damage]:
        """Every model checked against its digests: what is damaged, by model and tensor."""
        return [
            damage
            for (model_id,) in self.conn.execute(
                "SELECT model_id FROM models ORDER BY name"
            ).fetchall()
            for damage in self._damage(model_id)
        ]
