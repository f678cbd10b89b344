"""Kubernetes label selectors (``rack=r1,role in (worker,storage),!maintenance``).

Grammar (set-based and equality-based requirements, ANDed by commas)::

    selector    := requirement ("," requirement)*
    requirement := KEY | "!" KEY | KEY ("=" | "==" | "!=") VALUE
                 | KEY ("in" | "notin") "(" VALUE ("," VALUE)* ")"

As in Kubernetes, ``key!=v`` and ``key notin (...)`` also match objects without the key.
Parsing is pure; :func:`matches` evaluates in memory, the repository turns requirements into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from server.inventory.validation import check_label_key, check_label_value


class Op(StrEnum):
    EXISTS = "exists"
    """The key is present, whatever its value."""
    NOT_EXISTS = "!"
    """The key is absent."""
    EQ = "="
    """The key is present with this value."""
    NE = "!="
    """The key is absent or has another value."""
    IN = "in"
    """The key is present with one of the values."""
    NOTIN = "notin"
    """The key is absent or has none of the values."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()


class SelectorError(ValueError):
    pass


_TOKEN = re.compile(r"\s*(?:(?P<paren>[(),])|(?P<op>==|!=|=|!)|(?P<word>[A-Za-z0-9_./-]+))\s*")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unexpected character {text[pos]!r} at position {pos}")
        tokens.append(m.group("paren") or m.group("op") or m.group("word"))
        pos = m.end()
    return tokens


def parse_param(text: str) -> tuple[Requirement, ...]:
    """:func:`parse` for a selector given in a request: a bad one is a 422 naming the field."""
    from server.errors import Invalid

    try:
        return parse(text)
    except SelectorError as exc:
        raise Invalid(message=f"invalid selector: {exc}", details={"field": "selector"}) from None


def parse(text: str) -> tuple[Requirement, ...]:
    """Parse a selector; raise :class:`SelectorError` with the position of the problem."""
    if len(text) > 4096:
        raise SelectorError("selector longer than 4096 characters")
    return _Parser(_tokenize(text)).requirements()


_PUNCTUATION = frozenset({"(", ")", ",", "=", "==", "!=", "!"})


class _Parser:
    """Recursive descent over the tokens: ``requirement (',' requirement)*``."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self, default: str) -> str:
        return self.tokens[self.i] if self.i < len(self.tokens) else default

    def need(self, what: str) -> str:
        if self.i >= len(self.tokens):
            raise SelectorError(f"selector ends where {what} was expected")
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    @staticmethod
    def key(tok: str) -> str:
        try:
            return check_label_key(tok)
        except ValueError as exc:
            raise SelectorError(str(exc)) from None

    @staticmethod
    def value(tok: str) -> str:
        if tok in _PUNCTUATION:
            raise SelectorError(f"expected a value, found {tok!r}")
        try:
            return check_label_value(tok)
        except ValueError as exc:
            raise SelectorError(str(exc)) from None

    def requirements(self) -> tuple[Requirement, ...]:
        reqs: list[Requirement] = []
        while self.i < len(self.tokens):
            reqs.append(self.requirement())
            if self.i < len(self.tokens):
                if self.tokens[self.i] != ",":
                    raise SelectorError(f"expected ',' but found {self.tokens[self.i]!r}")
                self.i += 1
                if self.i == len(self.tokens):
                    raise SelectorError("selector ends with ','")
        return tuple(reqs)

    def requirement(self) -> Requirement:
        tok = self.need("a requirement")
        if tok == "!":
            return Requirement(self.key(self.need("a key")), Op.NOT_EXISTS)
        k = self.key(tok)
        nxt = self.peek(",")
        if nxt == ",":
            return Requirement(k, Op.EXISTS)
        if nxt in ("=", "==", "!="):
            self.i += 1
            empty = self.peek(",") == ","  # `key=` selects the empty value
            val = "" if empty else self.value(self.need("a value"))
            return Requirement(k, Op.NE if nxt == "!=" else Op.EQ, (val,))
        if nxt in ("in", "notin"):
            self.i += 1
            return Requirement(k, Op.IN if nxt == "in" else Op.NOTIN, self.value_set(nxt))
        raise SelectorError(f"unexpected {nxt!r} after key {k!r}")

    def value_set(self, op: str) -> tuple[str, ...]:
        if self.need("'('") != "(":
            raise SelectorError(f"expected '(' after {op!r}")
        vals = [self.value(self.need("a value"))]
        while (sep := self.need("',' or ')'")) == ",":
            vals.append(self.value(self.need("a value")))
        if sep != ")":
            raise SelectorError(f"expected ')' but found {sep!r}")
        return tuple(vals)


def matches(requirements: tuple[Requirement, ...], labels: dict[str, str]) -> bool:
    """True when ``labels`` satisfy every requirement."""
    for r in requirements:
        present = r.key in labels
        v = labels.get(r.key)
        ok = {
            Op.EXISTS: present,
            Op.NOT_EXISTS: not present,
            Op.EQ: present and v in r.values,
            Op.IN: present and v in r.values,
            Op.NE: not present or v not in r.values,
            Op.NOTIN: not present or v not in r.values,
        }[r.op]
        if not ok:
            return False
    return True
