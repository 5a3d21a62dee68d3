"""A small shop database for trying csv-export and csv-import: ``python -m examples.shop shop.db``.

Creates ``products`` (``ROWS`` rows) and an empty ``products_copy`` with the
same columns, in a new SQLite file.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

ROWS = 1000
SCHEMA = """
CREATE TABLE {table} (
    id INTEGER PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    price REAL,
    stock INTEGER NOT NULL DEFAULT 0
)
"""


def make_shop(path: str | Path, rows: int = ROWS) -> None:
    """Write the shop database at ``path`` (which must not exist yet)."""
    conn = sqlite3.connect(path)
    with conn:
        for table in ("products", "products_copy"):
            conn.execute(SCHEMA.format(table=table))
        conn.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?, ?)",
            (
                (i, f"SKU-{i:04d}", f"Product {i}", None if i % 50 == 0 else i % 97 + 0.99, i % 7)
                for i in range(1, rows + 1)
            ),
        )
    conn.close()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "shop.db")
    if target.exists():
        sys.exit(f"{target} exists already")
    make_shop(target)
    print(f"{target}: products ({ROWS} rows), products_copy (empty)", file=sys.stderr)
