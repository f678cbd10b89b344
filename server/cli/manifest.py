"""Rack manifests for ``bronze machines import``: CSV, YAML or JSON, read on the operator's host.

CSV has a header row; the columns (any order, all but ``name`` and ``macs`` optional)::

    name,macs,uuid,serial,labels,bmc_driver,bmc_address,bmc_port,bmc_scheme,bmc_username,
    bmc_password_file,bmc_password_env,bmc_verify_tls

``macs`` is ``MAC`` or ``MAC@IP`` (the IP reserved for that NIC), several separated by ``;`` or
spaces; ``labels`` is ``key=value;key=value``. A row's number is its line in the file.

YAML and JSON hold a list of objects (or ``{"machines": [...]}``) shaped like the body of
``POST /api/v1/machines``, except that the BMC password is named, never written:
``bmc.password_file`` (relative to the manifest's folder) or ``bmc.password_env``. A row's
number is its position in the list (1 = first).

The CLI reads each named password here and sends it in the request body; the server never reads
a file or variable it is told about. A manifest that writes a password inline is refused.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSV_COLUMNS = (
    "name",
    "macs",
    "uuid",
    "serial",
    "labels",
    "bmc_driver",
    "bmc_address",
    "bmc_port",
    "bmc_scheme",
    "bmc_username",
    "bmc_password_file",
    "bmc_password_env",
    "bmc_verify_tls",
)
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


class ManifestError(Exception):
    """The file as a whole cannot be read (not one row)."""


@dataclass(frozen=True)
class ManifestRow:
    """A row as the API takes it, or why the CLI could not build it."""

    number: int
    body: dict[str, Any]
    error: str | None = None


def _split(value: str) -> list[str]:
    return [p for p in value.replace(";", " ").split() if p]


def _nics(value: str) -> list[dict[str, str]]:
    out = []
    for spec in _split(value):
        mac, sep, ip = spec.partition("@")
        out.append({"mac": mac, "ip": ip} if sep else {"mac": mac})
    return out


def _labels(value: str) -> dict[str, str]:
    labels = {}
    for item in _split(value):
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"label {item!r} must be key=value")
        labels[key] = val
    return labels


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE | _FALSE:
        return v in _TRUE
    raise ValueError(f"bmc_verify_tls {value!r} is not true or false")


def csv_row(rec: dict[str, str]) -> dict[str, Any]:
    """One CSV record -> the nested row body (pure; raises ``ValueError``)."""
    get = {k: (v or "").strip() for k, v in rec.items() if k is not None}
    body: dict[str, Any] = {"name": get.get("name", ""), "nics": _nics(get.get("macs", ""))}
    for col in ("uuid", "serial"):
        if get.get(col):
            body[col] = get[col]
    if get.get("labels"):
        body["labels"] = _labels(get["labels"])
    if get.get("bmc_address"):
        bmc: dict[str, Any] = {"address": get["bmc_address"]}
        for col in ("driver", "scheme", "username", "password_file", "password_env"):
            if get.get(f"bmc_{col}"):
                bmc[col] = get[f"bmc_{col}"]
        if get.get("bmc_port"):
            if not get["bmc_port"].isdigit():
                raise ValueError(f"bmc_port {get['bmc_port']!r} is not a number")
            bmc["port"] = int(get["bmc_port"])
        if get.get("bmc_verify_tls"):
            bmc["verify_tls"] = _bool(get["bmc_verify_tls"])
        body["bmc"] = bmc
    return body


def parse_csv(text: str) -> list[tuple[int, dict[str, Any] | str]]:
    """``(line, body or error)`` per data record."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown or "name" not in header:
        raise ManifestError(
            f"CSV header must name columns of {', '.join(CSV_COLUMNS)} (with name); "
            f"unknown: {', '.join(unknown) or '-'}"
        )
    out: list[tuple[int, dict[str, Any] | str]] = []
    for rec in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in rec.values() if isinstance(v, str)):
            continue  # a blank line
        if None in rec:
            out.append((line, "more fields than the header names"))
            continue
        try:
            out.append((line, csv_row(rec)))
        except ValueError as exc:
            out.append((line, str(exc)))
    return out


def parse_structured(data: Any) -> list[tuple[int, dict[str, Any] | str]]:
    if isinstance(data, dict) and isinstance(data.get("machines"), list):
        data = data["machines"]
    if not isinstance(data, list):
        raise ManifestError("a YAML/JSON manifest is a list of machines (or {machines: [...]})")
    return [
        (i, item if isinstance(item, dict) else "a row must be an object")
        for i, item in enumerate(data, start=1)
    ]


def resolve_password(body: dict[str, Any], base: Path, env: dict[str, str]) -> str | None:
    """Replace ``bmc.password_file`` / ``bmc.password_env`` by the password itself; the error,
    if any. An inline ``bmc.password`` is refused."""
    bmc = body.get("bmc")
    if not isinstance(bmc, dict):
        return None
    if "password" in bmc:
        return "write the BMC password in a file (bmc.password_file) or variable (password_env)"
    file, var = bmc.pop("password_file", None), bmc.pop("password_env", None)
    if file is not None and var is not None:
        return "give bmc password_file or password_env, not both"
    if file is not None:
        path = base / str(file)
        try:
            bmc["password"] = path.read_text().rstrip("\r\n")
        except OSError as exc:
            return f"cannot read BMC password file {path}: {exc.strerror}"
    elif var is not None:
        if str(var) not in env:
            return f"environment variable {var} (BMC password) is not set"
        bmc["password"] = env[str(var)]
    return None


def read_manifest(path: Path, env: dict[str, str] | None = None) -> list[ManifestRow]:
    """Read a manifest file (format by extension: .csv, .yaml/.yml, .json)."""
    env = dict(os.environ) if env is None else env
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        parsed = parse_csv(text)
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            parsed = parse_structured(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not YAML: {exc}") from None
    elif suffix == ".json":
        try:
            parsed = parse_structured(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not JSON: {exc}") from None
    else:
        raise ManifestError(f"{path}: use a .csv, .yaml, .yml or .json file")
    rows = []
    for number, body in parsed:
        if isinstance(body, str):
            rows.append(ManifestRow(number, {}, body))
            continue
        error = resolve_password(body, path.parent, env)
        rows.append(ManifestRow(number, {} if error else body, error))
    return rows
