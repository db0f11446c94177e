"""Capsule fixtures: a migrated database and a running Capsule on port 0."""

from __future__ import annotations

from typing import Any

import pytest

from speckit_reflex.capsule import migrate
from speckit_reflex.clients.capsule import CapsuleClient
from speckit_reflex.policy import load_policy


@pytest.fixture
def migrated_url(db_url: str) -> str:
    """db_url (SQLite and PostgreSQL) migrated to head, as an operator would."""
    migrate.upgrade_url(db_url)
    return db_url


@pytest.fixture
def start_capsule(services_factory, migrated_url: str):
    """Start Capsule on the migrated database; policy overrides as dotted keys."""

    async def start(policy_env: dict[str, str] | None = None, **settings: Any):
        env = {
            f"SPECKIT_POLICY__{k.upper().replace('.', '__')}": v
            for k, v in (policy_env or {}).items()
        }
        svc = await services_factory(
            ["capsule"], database_url=migrated_url, policy=load_policy(None, env), **settings
        )
        return svc, CapsuleClient(svc.ctx.channel("capsule"))

    return start


@pytest.fixture
async def capsule(start_capsule) -> CapsuleClient:
    _, client = await start_capsule()
    return client
