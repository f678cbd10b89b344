"""Server settings: one pydantic-settings class, env prefix ``BRONZE_``.

Built once in the composition root (``bronze serve`` / ``create_app``) and passed down; nothing
reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.image_manifest import ManifestError, parse_key


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bronze"


ADMIN_TOKEN_MIN = 32
"""Shortest ``BRONZE_ADMIN_TOKEN`` accepted: 32 characters of a random string is at least
~190 bits from base64, ~128 from hex; shorter ones are refused rather than guessed at."""
ADMIN_TOKEN_MAX = 128
"""Longest bearer token the API looks up (longer ones are refused before any lookup)."""


def admin_token_problem(token: str) -> str | None:
    """Why ``token`` cannot be the seeded admin token, or None. Pure; never quotes the token."""
    if len(token) < ADMIN_TOKEN_MIN:
        return (
            f"is {len(token)} characters long; it must have at least {ADMIN_TOKEN_MIN} "
            "(a long random string, e.g. `openssl rand -hex 32`)"
        )
    if len(token) > ADMIN_TOKEN_MAX:
        return f"is {len(token)} characters long; it must have at most {ADMIN_TOKEN_MAX}"
    if not all(c.isascii() and c.isprintable() and not c.isspace() for c in token):
        return (
            "must be printable ASCII without spaces (it travels in an HTTP "
            "`Authorization: Bearer` header)"
        )
    return None


class ServerSettings(BaseSettings):
    """Every ``BRONZE_*`` setting of the central server (see README, "Configuration")."""

    model_config = SettingsConfigDict(env_prefix="BRONZE_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    """Directory for the SQLite file, the secret key, the admin token and the fleet CA."""
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data_dir>/bronze.db``. PostgreSQL: ``postgresql+psycopg://...``."""
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    api_advertise_url: str | None = None
    """URL at which the other replicas reach this one's REST API: node operations on an agent
    whose session this replica holds are forwarded here. Default ``http://API_HOST:API_PORT``
    unless API_HOST is a wildcard address (then nothing is forwarded to this replica)."""
    admin_token: SecretStr | None = None
    """Seeds the first admin token (for automation): any string of 32-128 printable ASCII
    characters without spaces (``brz_``-prefixed or not, e.g. from a vault); otherwise one is
    generated into ``<data_dir>/admin.token``."""
    secret_key: SecretStr | None = None
    """Fernet key encrypting BMC passwords at rest; default: ``<data_dir>/secret.key`` (created,
    0600).
    Replicas sharing one database must share this key."""
    migrate_on_start: bool = True
    """``bronze serve`` runs ``db upgrade`` before serving."""
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line (time, level, logger, message, machine, operation,
    request_id); ``text``: human lines."""
    metrics_token: SecretStr | None = None
    """Bearer token that ``GET /metrics`` requires on the REST listener. Unset: any API token of
    role reader or above is accepted there."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """A separate listener serving only ``/metrics`` without a token (for a scrape network that is
    itself the protection), on ``metrics_host``. Unset: no separate listener."""
    metrics_host: str = "127.0.0.1"
    """Address of the separate metrics listener."""
    api_cache_mb: int = Field(default=64, ge=0, le=4096)
    """Memory for cached GET responses of the inventory (0 turns the cache off). Entries are
    validated on every request against change counters in the database, so replicas never serve
    each other's stale data."""
    bmc_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
    )
    """CIDRs BMC addresses must fall in. Loopback and link-local are refused unless listed here."""
    bmc_ports: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["80", "443", "623", "6230-6299", "8000-8999", "16000-16999"]
    )
    """Ports and port ranges a BMC may use (``443,8000-8999``). bronze's own listeners (API,
    agent enrollment and session ports) are refused whatever this says."""

    power_sync_enabled: bool = True
    """Run the power-sync loop (one replica at a time holds its lease)."""
    power_sync_interval: float = Field(default=60.0, gt=0)
    """Seconds between power-state polls of each BMC (each pass is jittered by +-20%)."""
    power_sync_failures: int = Field(default=3, ge=1)
    """Consecutive failed polls after which a machine goes to ``maintenance`` with a fault
    reason."""
    bmc_max_concurrency: int = Field(default=64, ge=1, le=1024)
    """BMC operations in flight at once, across all machines."""
    bmc_min_interval: float = Field(default=0.2, ge=0)
    """Minimum seconds between two commands to the same BMC."""
    bmc_settle_timeout: float = Field(default=60.0, gt=0)
    """How long a power change may take to read back before the operation fails."""
    bmc_poll_interval: float = Field(default=1.0, gt=0)
    """Longest gap between read-backs while a power change settles (the first is immediate)."""
    bmc_session_idle: float = Field(default=20.0, ge=0)
    """Seconds a BMC session (IPMI RMCP+, Redfish) is kept for the next operation; 0: none kept."""
    bmc_session_max: int = Field(default=4096, ge=0)
    """Most BMC sessions kept between operations (each holds a socket; `bronze serve` raises its
    open-files limit to the hard limit at start)."""

    agent_api_enabled: bool = True
    """Serve the node agents' gRPC API (enrollment + mTLS sessions)."""
    agent_host: str = "127.0.0.1"
    """Address the agent API binds to."""
    agent_enroll_port: int = Field(default=7443, ge=0, le=65535)
    """Enrollment port (server-auth TLS, bootstrap token + CSR)."""
    agent_session_port: int = Field(default=7444, ge=0, le=65535)
    """Session port (mutual TLS, client certificate from the fleet CA)."""
    agent_server_names: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Names/IPs in the agent API's server certificate (comma list); default: ``agent_host``."""
    agent_heartbeat_interval: float = Field(default=30.0, gt=0)
    """Seconds between agent heartbeats; a session silent for three intervals is closed."""
    agent_enroll_grace: int = Field(default=600, ge=0, le=3600)
    """Seconds after an enrollment spent its bootstrap token during which a retry with the same
    token and a CSR for the same key gets the same certificate again (its answer was lost on
    the way); 0: never."""

    boot_discovery: bool = True
    """Unknown MACs that network-boot get the discovery profile (when it exists) and are recorded
    as ``discovered`` machines; off: they get an ``exit`` script."""
    boot_discovery_profile: str = "discovery"
    """Name of the boot profile used for unknown and ``discovered`` machines."""
    boot_discovery_rate: int = Field(default=30, ge=0)
    """At most this many machines are recorded as discovered per minute (a flood of random MACs
    gets ``exit`` scripts and writes nothing)."""
    boot_discovery_max: int = Field(default=1000, ge=0)
    """At most this many machines in phase ``discovered`` at once."""
    boot_token_ttl: int = Field(default=1800, ge=60, le=86_400)
    """Seconds an enrollment token rendered into an agent boot script stays valid."""
    boot_asset_max_bytes: int = Field(default=4 << 30, ge=1)
    """Largest boot asset accepted by upload."""
    boot_timeline_per_mac: int = Field(default=200, ge=10)
    """Netboot timeline events kept per MAC (oldest dropped first)."""
    boot_timeline_days: float = Field(default=7.0, gt=0)
    """Netboot timeline events older than this are dropped."""
    boot_timeline_max_rows: int = Field(default=100_000, ge=100)
    """Netboot timeline rows kept in total (oldest dropped first)."""

    asset_base_url: str | None = None
    """Where agents download OS image files during upgrades (``<url>/assets/NAME``). With several
    replicas, a URL that survives any one of them (the load balancer; assets must then be on
    storage every replica serves). Default: the boot plane's HTTP URL when it runs here, else
    this replica's advertised REST URL."""
    rollout_interval: float = Field(default=0.5, gt=0, le=60)
    """Seconds between two passes of the rollout runner over unfinished rollouts."""
    image_trusted_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Ed25519 public keys (``ed25519:BASE64``, comma list) that OS image signatures must verify
    against. Set: a signature that does not verify is refused, and an unsigned image cannot be
    named by a rollout, a profile or a machine config. Empty: signatures are optional."""

    @field_validator(
        "admin_token",
        "secret_key",
        "database_url",
        "api_advertise_url",
        "asset_base_url",
        "metrics_token",
        "metrics_port",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never contains the token (it is a secret; callers print this message).
        if value is not None:
            problem = admin_token_problem(value.get_secret_value())
            if problem:
                raise ValueError(f"BRONZE_ADMIN_TOKEN {problem}")
        return value

    @field_validator("bmc_networks", "bmc_ports", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("image_trusted_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("image_trusted_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            try:
                parse_key(text)
            except ManifestError as exc:
                raise ValueError(f"key {i + 1}: {exc}") from None
        return value

    @field_validator("agent_server_names", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("bmc_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value

    @field_validator("bmc_ports")
    @classmethod
    def _check_ports(cls, value: list[str]) -> list[str]:
        from bmc.netpolicy import parse_ports

        parse_ports(value)
        return value

    @field_validator("api_advertise_url")
    @classmethod
    def _check_advertise_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        u = urlsplit(value)
        if (
            u.scheme not in ("http", "https")
            or not u.hostname
            or u.path not in ("", "/")
            or u.query
            or u.fragment
            or u.username
            or u.password
        ):
            raise ValueError("must be http(s)://host[:port], without path, query or credentials")
        return value.rstrip("/")

    @property
    def effective_advertise_url(self) -> str | None:
        if self.api_advertise_url:
            return self.api_advertise_url
        try:
            if ipaddress.ip_address(self.api_host).is_unspecified:
                return None
        except ValueError:  # a host name
            pass
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"

    @property
    def effective_agent_server_names(self) -> list[str]:
        return self.agent_server_names or [self.agent_host]

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'bronze.db'}"
