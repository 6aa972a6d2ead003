"""Services the integration kits are tested against: real ones, started locally once per
session (or taken from the environment)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations.local_postgres import local_postgres

# --- PostgreSQL (integrations/postgres.py) ---------------------------------------------------


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DATABASE_URL if set, else a fresh database on an embedded PostgreSQL for the session.
    Tests share it: each uses tables (or a schema) of its own."""
    with local_postgres() as dsn:
        yield dsn


# --- end PostgreSQL ----------------------------------------------------------------------------
