"""Pure validators for inventory fields: MAC addresses, DNS-label names, Kubernetes-style labels."""

from __future__ import annotations

import re

_HEX = re.compile(r"^[0-9a-f]{12}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?)$")


def normalize_mac(value: str) -> str:
    """Accept ``aa:bb:..``, ``AA-BB-..``, ``aabb.ccdd.eeff`` and bare hex; return lower-case
    colon form."""
    if not isinstance(value, str):
        raise ValueError("MAC address must be a string")
    raw = value.strip().lower()
    if len(raw) == 17 and raw[2::3] in (":::::", "-----"):
        hexpart = raw.replace(":", "").replace("-", "")
    elif len(raw) == 14 and raw[4] == "." and raw[9] == ".":
        hexpart = raw.replace(".", "")
    elif len(raw) == 12:
        hexpart = raw
    else:
        raise ValueError(f"invalid MAC address {value!r}")
    if not _HEX.fullmatch(hexpart):
        raise ValueError(f"invalid MAC address {value!r}")
    if hexpart == "000000000000" or hexpart == "ffffffffffff":
        raise ValueError(f"invalid MAC address {value!r} (all zeros or broadcast)")
    return ":".join(hexpart[i : i + 2] for i in range(0, 12, 2))


def check_dns_label(value: str) -> str:
    """RFC 1123 label: lower-case alphanumerics and '-', 1-63 chars, no leading/trailing '-'."""
    if not isinstance(value, str) or not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: must be a DNS label (a-z, 0-9, '-', 1-63 chars, "
            "starting and ending with an alphanumeric)"
        )
    return value


def check_label_key(key: str) -> str:
    """Kubernetes label key: optional ``prefix/`` (DNS subdomain <= 253) + name (<= 63)."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(f"invalid label key {key!r}: bad prefix")
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"invalid label key {key!r}: name must be 1-63 chars of [A-Za-z0-9_.-], "
            "starting and ending with an alphanumeric"
        )
    return key


def check_label_value(value: str) -> str:
    """Kubernetes label value: empty, or <= 63 chars of [A-Za-z0-9_.-] starting/ending
    alphanumeric."""
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        raise ValueError(f"invalid label value {value!r}")
    return value


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for k, v in labels.items():
        check_label_key(k)
        check_label_value(v)
    return labels
