"""Rendering a machine's config from layered JSON merge patches, with provenance.

A machine's config is never stored whole: it is *rendered* from patches, each a JSON merge patch
(RFC 7386: objects merge key by key, ``null`` deletes a key, anything else — arrays included —
replaces), applied in a fixed order of layers:

1. ``fleet``    — every machine;
2. ``selector`` — machines whose labels match the patch's label selector (Kubernetes syntax);
3. ``machine``  — one machine.

Within a layer patches apply in the order given (callers sort by name or priority). For every
leaf of the result, :class:`Rendered.provenance` names the patch that last set it, so an operator
can see *why* a machine has a value, and a validation error can say which patch to fix.

The version of a rendered config is a hash of its canonical JSON (sorted keys, no blanks), so
the same content always has the same version and an agent can treat "same version" as "no-op".
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from server.config.model import REBOOT_FIELDS, MachineConfig

Json = Any
LabelMatcher = Callable[[Mapping[str, str]], bool]


class Layer(StrEnum):
    """Where a patch sits in the rendering order."""

    FLEET = "fleet"
    """Applies to every machine; applied first."""
    SELECTOR = "selector"
    """Applies to machines whose labels match the patch's selector; applied second."""
    MACHINE = "machine"
    """Applies to one machine; applied last."""


_LAYER_ORDER = {Layer.FLEET: 0, Layer.SELECTOR: 1, Layer.MACHINE: 2}


class ConfigError(ValueError):
    """A patch or rendered config is invalid. ``path`` is a JSON pointer (RFC 6901) to the field,
    ``patch`` the patch that set it when known. The REST layer answers it as a 422 ``invalid``."""

    def __init__(self, path: str, message: str, patch: str | None = None) -> None:
        self.path = path
        self.message = message
        self.patch = patch
        where = f" (set by patch {patch!r})" if patch else ""
        super().__init__(f"{path or '/'}: {message}{where}")

    def as_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "message": self.message, "patch": self.patch}


@dataclass(frozen=True)
class Patch:
    """One named JSON merge patch in a layer. ``selector`` is for the SELECTOR layer: a callable
    over labels, or a Kubernetes-syntax selector string (:mod:`server.inventory.selectors`)."""

    name: str
    layer: Layer
    body: Mapping[str, Json]
    selector: LabelMatcher | str | None = None

    def applies_to(self, labels: Mapping[str, str]) -> bool:
        if self.layer is not Layer.SELECTOR:
            return True
        if self.selector is None:
            return False
        if callable(self.selector):
            return self.selector(labels)
        from server.inventory import selectors  # the main engineer's Kubernetes selector parser

        return selectors.matches(selectors.parse(self.selector), dict(labels))


@dataclass(frozen=True)
class Rendered:
    config: MachineConfig
    document: dict[str, Json]
    version: str
    provenance: dict[str, str] = field(default_factory=dict)
    canonical: str | None = field(default=None, repr=False, compare=False)
    """``canonical_json(document)`` when :func:`render` made it already (for the version)."""

    @property
    def canonical_json(self) -> str:
        return self.canonical if self.canonical is not None else canonical_json(self.document)


# -- pointers -------------------------------------------------------------------------------------


def _esc(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def pointer(parts: Iterable[str | int]) -> str:
    return "".join("/" + _esc(str(p)) for p in parts)


def _drop_under(prov: dict[str, str], path: str) -> None:
    for k in [k for k in prov if k == path or k.startswith(path + "/")]:
        del prov[k]


# -- merge patch ----------------------------------------------------------------------------------


def merge_patch(
    target: Json,
    patch: Json,
    *,
    source: str = "",
    provenance: dict[str, str] | None = None,
    _path: str = "",
) -> Json:
    """RFC 7386 MergePatch(target, patch), recording in ``provenance`` which ``source`` set each
    leaf. Returns the new value; ``target`` is not modified."""
    prov = provenance if provenance is not None else {}
    if not isinstance(patch, dict):
        _drop_under(prov, _path)
        if source:
            prov[_path] = source
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    if not isinstance(target, dict):
        _drop_under(prov, _path)
    for key, value in patch.items():
        sub = f"{_path}/{_esc(key)}"
        if value is None:
            result.pop(key, None)
            _drop_under(prov, sub)
        else:
            result[key] = merge_patch(
                result.get(key), value, source=source, provenance=prov, _path=sub
            )
    if not patch and source and _path not in prov and not result:
        prov[_path] = source  # an explicit {} is a value too
    return result


def canonical_json(doc: Json) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_version(doc: Json) -> str:
    """Deterministic version: the first 128 bits of SHA-256 over the canonical JSON, hex."""
    return _version_of(canonical_json(doc))


def _version_of(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


# -- validation -----------------------------------------------------------------------------------


def _loc_to_pointer(loc: Sequence[str | int]) -> str:
    return pointer(loc)


def _provenance_for(path: str, prov: Mapping[str, str]) -> str | None:
    best = None
    for k, v in prov.items():
        if k == path or path.startswith(k + "/") or k.startswith(path + "/"):
            if best is None or len(k) >= len(best[0]):
                best = (k, v)
    return best[1] if best else None


def validate(document: Json, provenance: Mapping[str, str] | None = None) -> MachineConfig:
    """Validate a document; raise :class:`ConfigError` for the first failing field's path."""
    if not isinstance(document, dict):
        raise ConfigError("", "the machine config must be a JSON object")
    try:
        return MachineConfig.model_validate(document)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = _loc_to_pointer(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(path, msg, _provenance_for(path, provenance or {})) from None


def validate_patch(body: Json, name: str = "patch") -> None:
    """Check a patch on its own: it must be an object, and applying it to an empty config must
    give a valid config (so a patch that sets ``network.links.eth0.mtu`` to "big" is refused when
    saved, with the path, not when the first machine renders)."""
    if not isinstance(body, dict):
        raise ConfigError("", "a patch must be a JSON object", name)
    prov: dict[str, str] = {}
    doc = merge_patch({}, body, source=name, provenance=prov)
    validate(doc, prov)


# -- rendering ------------------------------------------------------------------------------------


def render(
    patches: Sequence[Patch],
    labels: Mapping[str, str] | None = None,
    *,
    base: Mapping[str, Json] | None = None,
) -> Rendered:
    """Render one machine's config: apply the applicable patches layer by layer, validate, hash."""
    labels = labels or {}
    prov: dict[str, str] = {}
    doc: Json = copy.deepcopy(dict(base)) if base else {}
    ordered = sorted(enumerate(patches), key=lambda ip: (_LAYER_ORDER[ip[1].layer], ip[0]))
    for _, p in ordered:
        if not isinstance(p.body, Mapping):
            raise ConfigError("", "a patch must be a JSON object", p.name)
        if p.applies_to(labels):
            doc = merge_patch(doc, dict(p.body), source=p.name, provenance=prov)
    config = validate(doc, prov)
    normal = config.model_dump(mode="json", exclude_defaults=True)
    normal["api_version"] = config.api_version
    text = canonical_json(normal)  # once for the version and the push (a fleet push: 10,000)
    return Rendered(config, normal, _version_of(text), prov, text)


# -- diff -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    op: str  # "add" | "remove" | "replace"
    path: str
    old: Json = None
    new: Json = None


def diff(old: Json, new: Json, _path: str = "") -> list[Change]:
    """Leaf-level differences between two rendered documents (lists compare whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{_path}/{_esc(key)}"
            if key not in new:
                out.append(Change("remove", sub, old[key], None))
            elif key not in old:
                out.append(Change("add", sub, None, new[key]))
            else:
                out.extend(diff(old[key], new[key], sub))
        return out
    if old == new:
        return []
    return [Change("replace", _path, old, new)]


def needs_reboot(old: Json, new: Json) -> list[str]:
    """The changed paths whose change only takes effect at boot."""
    changed = [c.path for c in diff(old or {}, new or {})]
    roots = tuple("/" + f for f in REBOOT_FIELDS)
    return [p for p in changed if any(p == r or p.startswith(r + "/") for r in roots)]
