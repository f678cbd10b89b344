"""Machine config: the declarative document (:mod:`.model`) and its layered rendering
(:mod:`.render`): JSON merge patches with provenance, validation with paths, diff, version."""

from server.config.model import REBOOT_FIELDS, SCHEMA_VERSION, MachineConfig, json_schema
from server.config.render import (
    Change,
    ConfigError,
    Layer,
    Patch,
    Rendered,
    canonical_json,
    config_version,
    diff,
    merge_patch,
    needs_reboot,
    render,
    validate,
    validate_patch,
)

__all__ = [
    "REBOOT_FIELDS",
    "SCHEMA_VERSION",
    "Change",
    "ConfigError",
    "Layer",
    "MachineConfig",
    "Patch",
    "Rendered",
    "canonical_json",
    "config_version",
    "diff",
    "json_schema",
    "merge_patch",
    "needs_reboot",
    "render",
    "validate",
    "validate_patch",
]
