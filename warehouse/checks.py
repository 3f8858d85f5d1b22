"""Data checks derived from the table specs: unique keys, required values, references.

Run by ``steelsight warehouse check`` and by the test suite after every import test.
The SQL is built here from the specs' own table and column names (constants of this
package, quoted as identifiers), never from input.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from warehouse.schema import TABLES


@dataclass(frozen=True)
class CheckResult:
    table: str
    check: str
    failing_rows: int

    @property
    def ok(self) -> bool:
        return self.failing_rows == 0


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _checks() -> list[tuple[str, str, str]]:
    """(table, check name, SQL counting the rows that break it) for every spec."""
    checks = []
    for spec in TABLES.values():
        table = _ident(spec.name)
        key = ", ".join(_ident(c) for c in spec.key)
        checks.append(
            (
                spec.name,
                f"unique ({', '.join(spec.key)})",
                f"SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {table} "
                f"GROUP BY {key} HAVING count(*) > 1)",
            )
        )
        nulls = " OR ".join(f"{_ident(c)} IS NULL" for c in spec.not_null)
        checks.append((spec.name, "not null", f"SELECT count(*) FROM {table} WHERE {nulls}"))
        for here, (other, there) in spec.references.items():
            on = " AND ".join(
                f"t.{_ident(a)} = o.{_ident(b)}" for a, b in zip(here, there, strict=True)
            )
            checks.append(
                (
                    spec.name,
                    f"({', '.join(here)}) in {other}",
                    f"SELECT count(*) FROM {table} AS t ANTI JOIN {_ident(other)} AS o ON {on}",
                )
            )
    return checks


def run_checks(con: duckdb.DuckDBPyConnection) -> list[CheckResult]:
    """Every check against the views on ``con`` (see Warehouse.connect)."""
    return [
        CheckResult(table, name, int(con.sql(sql).fetchall()[0][0]))
        for table, name, sql in _checks()
    ]
