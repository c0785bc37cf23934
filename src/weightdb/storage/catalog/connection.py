"""The SQLite connection of the catalog: every query turns SQLite's report of a damaged file
into one ``CatalogCorruptError`` that says what to do."""

import functools
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from weightdb.errors import CatalogCorruptError, one_line

CatalogError = sqlite3.Error
"""What a failed catalog statement raises (damage arrives as ``CatalogCorruptError``)."""


def _reporting_damage(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self, *args):
        try:
            return method(self, *args)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as error:
            # weightdb writes only valid text: a value that is not UTF-8 is damage too
            if isinstance(error, sqlite3.DatabaseError) and not is_damage(error):
                raise
            connection = self if isinstance(self, sqlite3.Connection) else self.connection
            raise damaged(connection.path, error) from None

    return call


class _DamageReportingCursor(sqlite3.Cursor):
    execute = _reporting_damage(sqlite3.Cursor.execute)
    executemany = _reporting_damage(sqlite3.Cursor.executemany)
    fetchone = _reporting_damage(sqlite3.Cursor.fetchone)
    fetchmany = _reporting_damage(sqlite3.Cursor.fetchmany)
    fetchall = _reporting_damage(sqlite3.Cursor.fetchall)
    __next__ = _reporting_damage(sqlite3.Cursor.__next__)


class DamageReportingConnection(sqlite3.Connection):
    """A connection whose every query turns SQLite's report of a damaged file into one
    ``CatalogCorruptError`` saying what to do: damage surfaces in whichever query first
    reads the damaged page, not only when the catalog is opened."""

    path: Path

    def cursor(self, factory=_DamageReportingCursor):
        return super().cursor(factory)

    def execute(self, sql: str, parameters=()) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, parameters)


SCHEMA_DAMAGE = re.compile(
    r"no such (table|column)|foreign key mismatch|table \S+ has (no column named|\d+ columns)"
    r"|Could not decode to UTF-8"
)
"""Messages of SQLITE_ERROR (or of the sqlite3 module itself, which sets no error name)
that mean the stored schema or text is not what weightdb wrote."""


def is_damage(error: sqlite3.DatabaseError) -> bool:
    """Whether SQLite found the file damaged (or not a database at all, or with a schema
    weightdb did not create), not merely busy."""
    name = getattr(error, "sqlite_errorname", None)
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return True
    return name in ("SQLITE_ERROR", None) and SCHEMA_DAMAGE.match(str(error)) is not None


def damaged(path: Path, problem: object) -> CatalogCorruptError:
    """The one-line error for a catalog file SQLite finds damaged (``problem`` says how)."""
    return CatalogCorruptError(
        f"{path} is damaged ({one_line(problem)}); restore it from a backup, then run "
        "`weightdb verify`"
    )
