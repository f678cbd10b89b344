"""Event kinds are a declared vocabulary: every member documented, docs/events.md's table
matches the enum, every kind written in server/ is a member, and the API refuses unknown kinds."""

from __future__ import annotations

import ast
import re
from enum import StrEnum
from pathlib import Path

import pytest

from server.types import EventGroup, EventKind
from tests.peers.apiserver import RunningServer

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "events.md"
BEGIN, END = "<!-- event-kinds:begin -->", "<!-- event-kinds:end -->"


def member_docs(cls: type[StrEnum]) -> dict[str, str]:
    """Member value -> its docstring (the string literal right after the assignment)."""
    tree = ast.parse((ROOT / "server" / "types.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs: dict[str, str] = {}
    body = node.body
    for cur, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(cur, ast.Assign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            name = cur.targets[0].id  # type: ignore[attr-defined]
            docs[cls[name].value] = " ".join(nxt.value.value.split())
    return docs


def table() -> str:
    docs = member_docs(EventKind)
    rows = ["| kind | group | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{k.value}` | `{k.group.value}` | {docs[k.value]} |" for k in EventKind]
    return "\n".join(rows)


@pytest.mark.parametrize("cls", [EventKind, EventGroup], ids=lambda c: c.__name__)
def test_every_member_has_a_docstring(cls: type[StrEnum]) -> None:
    assert set(member_docs(cls)) == {m.value for m in cls}


def test_every_kind_belongs_to_a_group_and_every_group_has_kinds() -> None:
    assert {k.group for k in EventKind} == set(EventGroup)


def test_docs_table_matches_the_enum() -> None:
    text = DOC.read_text()
    got = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert got == table(), f"regenerate the table in {DOC}:\n{table()}"


def test_events_are_written_only_with_enum_members() -> None:
    """No bare string kinds: every ``record(..., kind=...)`` in server/ names an EventKind member,
    or looks one up (``EventKind(f"rollout.{status}")``: an undeclared kind raises)."""
    bare = []
    for path in (ROOT / "server").rglob("*.py"):
        for m in re.finditer(r"\brecord\((?:[^()]|\([^()]*\))*?kind=([^,)\s]+)", path.read_text()):
            if not m.group(1).startswith(("EventKind.", "EventKind(")):  # a member, or a lookup
                bare.append(f"{path.relative_to(ROOT)}: kind={m.group(1)}")
    assert bare == []


def test_kind_query_is_typed(api: RunningServer) -> None:
    c = api.client()
    assert c.post(
        "/api/v1/machines", json={"name": "ev1", "nics": [{"mac": "02:00:00:00:0e:01"}]}
    ).is_success
    for path in ("/api/v1/events", "/api/v1/machines/ev1/events"):
        for kind, n in (("machine.created", 1), ("machine", 1), ("token.revoked", 0)):
            r = c.get(path, params={"kind": kind})
            assert r.status_code == 200, (path, kind, r.text)
            assert [e["kind"] for e in r.json()["items"]] == ["machine.created"] * n
        for bad in ("machine.exploded", "mach", "machine.", ""):
            r = c.get(path, params={"kind": bad})
            assert r.status_code == 422, (path, bad, r.text)
            assert r.json()["error"]["code"] == "invalid"
    spec = c.get("/openapi.json").json()
    param = next(
        p for p in spec["paths"]["/api/v1/events"]["get"]["parameters"] if p["name"] == "kind"
    )
    refs = {s.get("$ref", "").rsplit("/", 1)[-1] for s in param["schema"]["anyOf"]}
    assert refs >= {"EventKind", "EventGroup"}
    schemas = spec["components"]["schemas"]
    assert schemas["EventKind"]["enum"] == [k.value for k in EventKind]
    assert schemas["EventGroup"]["enum"] == [g.value for g in EventGroup]
