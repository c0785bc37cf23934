"""A dedup plan: the replacements decided so far, with undo back to any earlier mark.

Undo restores both halves of the state: the list of replacements (what would be committed)
and the workspace's block mapping (what the next evaluation reads), so a rejected batch leaves
no trace in either.
"""

from dataclasses import dataclass, field

from weightdb.dedup.workspace import Position, Workspace


@dataclass(frozen=True)
class Replacement:
    position: Position
    old_block: int
    new_block: int
    similarity: float  # the method's own similarity score of old and new block


@dataclass
class Plan:
    workspace: Workspace
    replacements: list[Replacement] = field(default_factory=list)

    def replace(self, position: Position, new_block: int, similarity: float) -> None:
        old = self.workspace.current[position]
        self.replacements.append(Replacement(position, old, new_block, similarity))
        self.workspace.current[position] = new_block

    def mark(self) -> int:
        return len(self.replacements)

    def undo_to(self, mark: int) -> None:
        """Forget every replacement made after ``mark``, newest first."""
        while len(self.replacements) > mark:
            replacement = self.replacements.pop()
            self.workspace.current[replacement.position] = replacement.old_block

    def models(self, since: int = 0) -> set[str]:
        return {r.position.model for r in self.replacements[since:]}

    def final(self) -> list[Replacement]:
        """One replacement per changed position, from its original block to its final one."""
        workspace, seen, result = self.workspace, set(), []
        for replacement in reversed(self.replacements):
            position = replacement.position
            if position in seen:
                continue
            seen.add(position)
            original, now = workspace.original[position], workspace.current[position]
            if original != now:
                result.append(Replacement(position, original, now, replacement.similarity))
        return result[::-1]
