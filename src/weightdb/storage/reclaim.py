"""Removing a model: its rows, then the blocks, copies and pages nothing refers to any more.

Rows go in one transaction (``Catalog.delete_model``, ``Catalog.reclaim_unreferenced``).
Pages leave use by being retired, not deleted: whoever planned a read on them before the commit
can still make it, and their files are deleted by a later writer once the grace period has
passed (``Store.collect_garbage``).
"""

from weightdb.storage.store import Store


def remove_model(store: Store, name: str) -> None:
    with store.writer_lock:
        catalog = store.catalog
        model_id = catalog.model_id(name)
        with catalog.transaction():
            catalog.delete_model(model_id)
            retired = catalog.reclaim_unreferenced()
        store.pool.discard(retired)
        store.collect_garbage()
