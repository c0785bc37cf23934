"""A layout: the pages (lists of block ids) and which pages each model reads.

Copies. A block may be stored in more than one page. Without copies every page must hold blocks
of one sharing signature only (a page mixing two signatures has a reader that does not use one
of its blocks), and then Greedy-1 is already optimal; the netsDB algorithms reach fewer pages
only by copying a shared block into several pages. So copies are allowed, counted as
``copied_blocks`` (distinct blocks stored more than once) and ``stored_blocks`` (all stored
copies), and our own algorithm spends them only where they save a page.

Which pages a model reads is derived, not chosen by the algorithms: a model may read a page
only if it uses every block on it; among those it reads the pages that hold a block found on no
other readable page, then larger pages first until its blocks are covered, and drops any page
whose blocks the others already hold. So every page a model reads is the only one it reads that
holds some block, and ``sources`` (which page each model takes each block from) needs every
page of ``reads``.
"""

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from weightdb.packing.instance import Instance


@dataclass(frozen=True)
class Layout:
    pages: tuple[tuple[int, ...], ...]
    reads: Mapping[str, tuple[int, ...]]
    """Model -> indices of the pages it reads."""

    @classmethod
    def from_pages(cls, instance: Instance, pages: Iterable[Sequence[int]]) -> "Layout":
        pages = tuple(tuple(page) for page in pages)
        signatures = instance.signatures()
        readable: dict[str, list[int]] = {model: [] for model in instance.models}
        for index, page in enumerate(pages):
            for model in _readers(page, signatures):
                readable[model].append(index)
        reads = {
            model: _cover(instance.models[model], pages, candidates)
            for model, candidates in readable.items()
        }
        return cls(pages=pages, reads=reads)

    @property
    def stored_blocks(self) -> int:
        return sum(len(page) for page in self.pages)

    @property
    def copied_blocks(self) -> int:
        """Distinct blocks stored in more than one page."""
        counts = Counter(block for page in self.pages for block in page)
        return sum(1 for count in counts.values() if count > 1)

    @property
    def unread_pages(self) -> int:
        """Pages no model needs (the artifact's packers leave some behind)."""
        read = {index for pages in self.reads.values() for index in pages}
        return len(self.pages) - len(read)

    def pages_read(self) -> dict[str, int]:
        return {model: len(pages) for model, pages in self.reads.items()}

    def sources(self) -> dict[str, dict[int, int]]:
        """Model -> block -> index of the page the model reads it from: the first page of its
        ``reads`` that holds the block. What a store of this layout records per model."""
        result: dict[str, dict[int, int]] = {}
        for model, indices in self.reads.items():
            chosen = result[model] = {}
            for index in indices:
                for block in self.pages[index]:
                    chosen.setdefault(block, index)
        return result


def chunk(blocks: Sequence[int], capacity: int) -> list[list[int]]:
    """Consecutive pages of at most ``capacity`` blocks, in order."""
    return [list(blocks[start : start + capacity]) for start in range(0, len(blocks), capacity)]


def check_layout(instance: Instance, layout: Layout) -> list[str]:
    """Every way ``layout`` breaks the packing rules; empty when it is valid.

    Rules: pages are non-empty, hold distinct known blocks, at most ``blocks_per_page`` of them;
    a model reads only pages all of whose blocks it uses, and together they hold all its
    blocks. A page no model needs to read is wasteful, not invalid (see ``unread_pages``).
    """
    problems = []
    signatures = instance.signatures()
    for index, page in enumerate(layout.pages):
        if not page:
            problems.append(f"page {index} is empty")
        if len(page) > instance.blocks_per_page:
            problems.append(f"page {index} holds {len(page)} > {instance.blocks_per_page} blocks")
        if len(set(page)) != len(page):
            problems.append(f"page {index} holds a block twice")
        if unknown := [block for block in page if block not in signatures]:
            problems.append(f"page {index} holds blocks no model uses: {unknown[:5]}")
    for model, blocks in instance.models.items():
        used = set(blocks)
        seen: set[int] = set()
        for index in layout.reads.get(model, ()):
            if not 0 <= index < len(layout.pages):
                problems.append(f"model {model!r} reads page {index}, which does not exist")
                continue
            page = layout.pages[index]
            if foreign := [block for block in page if block not in used]:
                problems.append(f"model {model!r} reads page {index} with foreign {foreign[:5]}")
            seen.update(page)
        if missing := used - seen:
            problems.append(f"model {model!r} misses {len(missing)} blocks, e.g. {min(missing)}")
    return problems


def _readers(page: Sequence[int], signatures: Mapping[int, frozenset[str]]) -> frozenset[str]:
    """The models that use every block of ``page``: the only ones allowed to read it."""
    if not page or any(block not in signatures for block in page):
        return frozenset()
    return frozenset.intersection(*{signatures[block] for block in page})


def _cover(
    blocks: Sequence[int], pages: Sequence[Sequence[int]], candidates: list[int]
) -> tuple[int, ...]:
    """A small set of readable pages that holds all ``blocks`` (exact when nothing is copied),
    each of them the only chosen page holding one of its blocks."""
    counts = Counter(block for index in candidates for block in pages[index])
    chosen = [index for index in candidates if any(counts[block] == 1 for block in pages[index])]
    covered = {block for index in chosen for block in pages[index]}
    if len(covered) < len(blocks):
        for index in sorted(set(candidates) - set(chosen), key=lambda i: -len(pages[i])):
            if not covered.issuperset(pages[index]):
                chosen.append(index)
                covered.update(pages[index])
        counts = Counter(block for index in chosen for block in pages[index])
        for index in sorted(chosen, key=lambda i: len(pages[i])):
            if all(counts[block] > 1 for block in pages[index]):
                chosen.remove(index)
                counts.subtract(pages[index])
    return tuple(sorted(chosen))
