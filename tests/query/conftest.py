"""Query tests run on every store backend: ``query_db()`` gives an empty database.

``query_db.keeps_key_order`` is False on PostgreSQL: ``jsonb`` stores object keys in its
own order (shorter keys first), so object results are compared with sorted keys there;
values, kinds and number spellings (``1`` vs ``1.0``) are compared exactly on both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._support import make_db


@pytest.fixture(scope="session")
def query_db(backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """Factory of empty databases with the store schema: SQLite in memory, or PostgreSQL."""
    if backend != "postgresql":
        yield _Factory(make_db, keeps_key_order=True)
        return
    from ._pg import PgQueryDb

    cluster = request.getfixturevalue("pg_cluster")
    db = PgQueryDb(cluster.create_database(f"query_{os.getpid()}"))
    try:
        yield _Factory(db.reset, keeps_key_order=False)
    finally:
        db.close()


class _Factory:
    def __init__(self, make: Callable[[], Any], *, keeps_key_order: bool) -> None:
        self._make = make
        self.keeps_key_order = keeps_key_order

    def __call__(self) -> Any:
        return self._make()
