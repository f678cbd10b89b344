"""The certificates generation (``server.agents.dbstore``): every change that makes a certificate
stop opening sessions moves it, on SQLite and PostgreSQL, so each replica's revocation sweep may
skip its lookup while it stands still. Issuing or renewing alone does not move it."""

from __future__ import annotations

import asyncio
import datetime as dt

from server.agents import revocation
from server.agents.dbstore import DbAgentStore
from server.agents.store import IssuedCertificate
from server.inventory.db import Database
from server.inventory.models import Machine

M = "00000000-0000-0000-0000-000000000001"
T = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _generation(store: DbAgentStore) -> int | None:
    return asyncio.run(store.certificates_generation())


def _certificate(store: DbAgentStore, serial: int, *, renewal: bool = False) -> None:
    asyncio.run(store.record_certificate(M, IssuedCertificate(serial, T), renewal=renewal))


def test_generation_moves_when_a_certificate_stops_being_accepted(db: Database) -> None:
    with db.write() as s:
        s.add(Machine(id=M, name="n1", phase="ready", hardware={}))
    store = DbAgentStore(db)
    assert _generation(store) is None  # never bumped: the first read creates it
    g = _generation(store)
    assert g is not None

    _certificate(store, 1)  # first enrollment: nothing revoked
    _certificate(store, 2, renewal=True)  # 1 stays accepted until 2 is used
    assert _generation(store) == g

    assert asyncio.run(store.certificate_accepted(M, 2))  # 2 in use: 1 is dropped
    g, before = _generation(store), g
    assert g is not None and g > before

    _certificate(store, 3)  # enrollment again: 2 is revoked
    g, before = _generation(store), g
    assert g is not None and g > before

    with db.write() as s:
        revocation.revoke(s, M, reason=revocation.RevokeReason.OPERATOR, actor="test")
    g, before = _generation(store), g
    assert g is not None and g > before

    with db.write() as s:
        m = s.get(Machine, M)
        assert m is not None
        s.delete(m)
    assert (_generation(store) or 0) > g
