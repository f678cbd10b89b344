"""Redfish power driver (DMTF DSP0266, Redfish Specification; DSP8010 ComputerSystem).

A Redfish BMC serves a tree of JSON resources under ``/redfish/v1/``. The host is a
``ComputerSystem`` (``/redfish/v1/Systems/{id}``) whose ``PowerState`` property reads
``On``/``Off``/``PoweringOn``/``PoweringOff``; power is changed by POSTing
``{"ResetType": ...}`` to its ``#ComputerSystem.Reset`` action target, and the next
boot is chosen by PATCHing ``Boot.BootSourceOverrideTarget`` (``Pxe``, ``Hdd``...),
``BootSourceOverrideEnabled`` (``Once``/``Continuous``) and ``BootSourceOverrideMode``
(``UEFI``/``Legacy``). Clients authenticate with a session (``SessionService``,
``X-Auth-Token``) or HTTP Basic (DSP0266 section 13.3); sushy tries the former and
falls back to the latter.

Only this module and its HTTP layer (:mod:`bmc.redfish_guard`) import sushy. They add three
guarantees sushy does not give:

- **TLS means what the endpoint says.** Verification is on by default, against the
  endpoint's own CA bundle if it has one (written to a private temp file, removed on
  ``close()``) or the default trust store; ``verify_tls=False`` is the only way out.
  The HTTP session ignores the environment (``trust_env = False``): this matters
  because ``REQUESTS_CA_BUNDLE`` otherwise silently overrides ``verify``.
- **No cross-origin redirects.** requests follows redirects and sushy's session token
  (``X-Auth-Token``) is a plain header that would go along. A redirect to another
  scheme/host/port raises :class:`BmcRedirectRefused` before any request is sent there.
- **One BMC call, no hidden retries.** sushy retries connection errors three times with
  2 s sleeps and 5xx GETs ten times; the connector here makes exactly one attempt so
  that retry policy stays in :mod:`bmc.actions`.

This module holds the driver (:class:`RedfishDriver`) and the translation of sushy's vocabulary
and errors into ours; the guarded HTTP session and the one-shot connector that give the last
two guarantees are in :mod:`bmc.redfish_guard` (their names are importable from here too).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import sushy
from requests import exceptions as req_exc
from sushy import auth as sushy_auth
from sushy import exceptions as sushy_exc
from sushy.resources import constants as res_cons
from sushy.resources.system import constants as sys_cons

from bmc.driver import DriverTimeouts
from bmc.errors import (
    BmcAuthError,
    BmcBusyError,
    BmcConfigError,
    BmcConnectionError,
    BmcError,
    BmcProtocolError,
    BmcRedirectRefused,
    BmcServerError,
    BmcTimeoutError,
    BmcTlsError,
    BmcUnsupportedError,
    scrub,
)
from bmc.inspection import Inspection, canonical_mac, canonical_uuid
from bmc.redfish_guard import GuardedSession as GuardedSession
from bmc.redfish_guard import OneShotConnector
from bmc.redfish_guard import _RedirectRefused as _RedirectRefused
from bmc.types import BmcEndpoint, BootDevice, BootSetting, PowerState

LOG = logging.getLogger(__name__)

# -- translation tables (library vocabulary -> ours) -----------------------------------

POWER_STATES: dict[Any, PowerState] = {
    res_cons.PowerState.ON: PowerState.on,
    res_cons.PowerState.OFF: PowerState.off,
    res_cons.PowerState.POWERING_ON: PowerState.unknown,
    res_cons.PowerState.POWERING_OFF: PowerState.unknown,
    res_cons.PowerState.PAUSED: PowerState.unknown,
}

BOOT_SOURCES: dict[BootDevice, Any] = {
    BootDevice.pxe: sys_cons.BootSource.PXE,
    BootDevice.disk: sys_cons.BootSource.HDD,
    BootDevice.bios: sys_cons.BootSource.BIOS_SETUP,
    BootDevice.cdrom: sys_cons.BootSource.CD,
}
BOOT_DEVICES: dict[Any, BootDevice] = {v: k for k, v in BOOT_SOURCES.items()}

# Exception classes in the order they are tested (subclasses first).
SUSHY_ERRORS: tuple[tuple[type[Exception], type[BmcError]], ...] = (
    (sushy_exc.AccessError, BmcAuthError),
    (sushy_exc.ResourceNotFoundError, BmcConfigError),
    (sushy_exc.ServerSideError, BmcServerError),
    (sushy_exc.BadRequestError, BmcUnsupportedError),
    (sushy_exc.InvalidParameterValueError, BmcUnsupportedError),
    (sushy_exc.MissingActionError, BmcUnsupportedError),
    (sushy_exc.MissingAttributeError, BmcProtocolError),
    (sushy_exc.MalformedAttributeError, BmcProtocolError),
    (sushy_exc.UnknownDefaultError, BmcConfigError),
    (sushy_exc.ConnectionError, BmcConnectionError),
    (sushy_exc.HTTPError, BmcProtocolError),
)
BUSY_STATUSES = frozenset({409, 429, 503})

# BMCs (user@address:port) known to refuse Redfish sessions: go straight to Basic auth
# instead of paying a SessionService GET + a failed POST (and sushy's warnings) per call.
_basic_only: set[str] = set()


class RedfishDriver:
    """:class:`bmc.driver.PowerDriver` over Redfish, via sushy. Connects lazily."""

    def __init__(self, endpoint: BmcEndpoint, timeouts: DriverTimeouts | None = None) -> None:
        self.endpoint = endpoint
        self.timeouts = timeouts or DriverTimeouts()
        self._root: Any = None
        self._system: Any = None
        self._ca_path: str | None = None

    def __repr__(self) -> str:
        return f"RedfishDriver({self.endpoint.key})"

    # -- plumbing -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        ep = self.endpoint
        port = ep.port or (443 if ep.scheme == "https" else 80)
        host = f"[{ep.address}]" if ":" in ep.address else ep.address
        return f"{ep.scheme}://{host}:{port}"

    def _verify(self) -> bool | str:
        if not self.endpoint.verify_tls:
            return False
        if self.endpoint.ca_bundle:
            if self._ca_path is None:
                fd, path = tempfile.mkstemp(prefix="bronze-bmc-ca-", suffix=".pem")
                with os.fdopen(fd, "w") as fh:
                    fh.write(self.endpoint.ca_bundle)
                self._ca_path = path
            return self._ca_path
        return True

    def _translate(self, exc: BaseException, operation: str) -> BmcError:
        ep = self.endpoint
        secret = ep.password.get_secret_value()
        detail = scrub(getattr(exc, "message", None) or exc, secret)
        if isinstance(exc, _RedirectRefused):
            return BmcRedirectRefused(bmc=ep.key, target=scrub(exc.target, secret))
        if isinstance(exc, sushy_exc.ConnectionError):
            cause = exc.__context__
            if isinstance(cause, req_exc.SSLError):
                return BmcTlsError(bmc=ep.key, detail=detail)
            if isinstance(cause, req_exc.Timeout):
                seconds = (
                    self.timeouts.read
                    if isinstance(cause, req_exc.ReadTimeout)
                    else self.timeouts.connect
                )
                return BmcTimeoutError(bmc=ep.key, seconds=seconds, detail=detail)
            return BmcConnectionError(bmc=ep.key, detail=detail)
        status = getattr(exc, "status_code", None)
        if status in BUSY_STATUSES:
            return BmcBusyError(bmc=ep.key, detail=detail)
        for lib_cls, our_cls in SUSHY_ERRORS:
            if isinstance(exc, lib_cls):
                if our_cls is BmcAuthError:
                    return BmcAuthError(bmc=ep.key, user=ep.username, detail=detail)
                if our_cls is BmcServerError:
                    return BmcServerError(bmc=ep.key, status=status, detail=detail)
                if our_cls is BmcUnsupportedError:
                    return BmcUnsupportedError(bmc=ep.key, operation=operation, detail=detail)
                return our_cls(bmc=ep.key, detail=detail)
        if isinstance(exc, (req_exc.RequestException, OSError, ValueError)):
            return BmcConnectionError(bmc=ep.key, detail=detail)
        return BmcProtocolError(bmc=ep.key, detail=f"{type(exc).__name__}: {detail}")

    def _call(self, operation: str, fn: Any) -> Any:
        try:
            return fn()
        except BmcError:
            raise
        except Exception as exc:  # translated at the edge, nothing escapes untyped
            raise self._translate(exc, operation) from None

    def _get_system(self) -> Any:
        if self._system is None:
            ep = self.endpoint
            conn = OneShotConnector(self.base_url, self._verify(), self.timeouts)
            auth_key = f"{ep.username}@{ep.key}"
            auth_cls = (
                sushy_auth.BasicAuth if auth_key in _basic_only else sushy_auth.SessionOrBasicAuth
            )
            auth = auth_cls(username=ep.username, password=ep.password.get_secret_value())
            self._root = sushy.Sushy(self.base_url, auth=auth, connector=conn)
            if auth_cls is sushy_auth.SessionOrBasicAuth and not auth.can_refresh_session():
                _basic_only.add(auth_key)  # sushy fell back to Basic auth
            system_path = None
            if ep.system_id:
                system_path = f"/redfish/v1/Systems/{ep.system_id}"
            self._system = self._root.get_system(system_path)
        return self._system

    def _reset(self, operation: str, wanted: tuple[Any, ...]) -> None:
        """POST the first reset type of ``wanted`` that the system allows."""

        def run() -> None:
            system = self._get_system()
            allowed = system.get_allowed_reset_system_values()
            for value in wanted:
                if value in allowed:
                    LOG.debug("redfish reset bmc=%s reset_type=%s", self.endpoint.key, value)
                    system.reset_system(value)
                    return
            raise BmcUnsupportedError(
                bmc=self.endpoint.key,
                operation=operation,
                detail=f"allowed ResetType values: {sorted(str(v) for v in allowed)}",
            )

        self._call(operation, run)

    # -- PowerDriver --------------------------------------------------------------------

    def get_power_state(self) -> PowerState:
        def run() -> PowerState:
            system = self._get_system()
            system.refresh(force=True)
            return POWER_STATES.get(system.power_state, PowerState.unknown)

        state: PowerState = self._call("get power state", run)
        return state

    def power_on(self) -> None:
        self._reset("power on", (res_cons.ResetType.ON, res_cons.ResetType.FORCE_ON))

    def power_off(self, graceful: bool) -> None:
        if graceful:
            self._reset("soft power off", (res_cons.ResetType.GRACEFUL_SHUTDOWN,))
        else:
            self._reset("power off", (res_cons.ResetType.FORCE_OFF,))

    def power_cycle(self) -> None:
        self._reset(
            "power cycle", (res_cons.ResetType.POWER_CYCLE, res_cons.ResetType.FORCE_RESTART)
        )

    def reset(self) -> None:
        self._reset("reset", (res_cons.ResetType.FORCE_RESTART,))

    def set_boot_device(self, device: BootDevice, persistent: bool, uefi: bool) -> None:
        enabled = (
            sys_cons.BootSourceOverrideEnabled.CONTINUOUS
            if persistent
            else sys_cons.BootSourceOverrideEnabled.ONCE
        )
        mode = (
            sys_cons.BootSourceOverrideMode.UEFI if uefi else sys_cons.BootSourceOverrideMode.LEGACY
        )

        def run() -> None:
            system = self._get_system()
            system.set_system_boot_options(BOOT_SOURCES[device], enabled=enabled, mode=mode)

        self._call("set boot device", run)

    def get_boot_device(self) -> BootSetting:
        def run() -> BootSetting:
            system = self._get_system()
            system.refresh(force=True)
            boot = system.boot
            enabled = getattr(boot, "enabled", None)
            mode = getattr(boot, "mode", None)
            return BootSetting(
                device=BOOT_DEVICES.get(getattr(boot, "target", None)),
                persistent=None
                if enabled is None
                else enabled == sys_cons.BootSourceOverrideEnabled.CONTINUOUS,
                uefi=None if mode is None else mode == sys_cons.BootSourceOverrideMode.UEFI,
            )

        setting: BootSetting = self._call("get boot device", run)
        return setting

    def inspect(self) -> Inspection:
        """:class:`bmc.inspection.Inspector`: the system's UUID, serial, NIC MACs
        (``EthernetInterfaces``), CPUs and memory, without touching the host's power."""

        def run() -> Inspection:
            system = self._get_system()
            system.refresh(force=True)
            serial = system.serial_number or None
            if not serial:
                # NOTE: some BMCs (and sushy-emulator) put the serial on the Chassis only.
                serial = _optional(lambda: next((c.serial_number for c in system.chassis), None))
            macs = _optional(
                lambda: [i.mac_address for i in system.ethernet_interfaces.get_members()]
            )
            cpus = _optional(lambda: system.processors.summary)
            memory = _optional(lambda: system.memory_summary)
            return Inspection(
                uuid=canonical_uuid(system.uuid),
                serial=serial or None,
                manufacturer=system.manufacturer or None,
                model=system.model or None,
                macs=tuple(sorted({m for m in map(canonical_mac, macs or ()) if m})),
                cpu_count=getattr(cpus, "count", None),
                cpu_arch=None
                if cpus is None or cpus.architecture is None
                else str(cpus.architecture),
                memory_gib=getattr(memory, "size_gib", None),
                source="redfish",
            )

        result: Inspection = self._call("inspect", run)
        return result

    def close(self) -> None:
        root, self._root, self._system = self._root, None, None
        if root is not None:
            try:
                auth = getattr(root, "_auth", None)
                if auth is not None:
                    auth.close()
                    root._auth = None
                root._conn.close()
            except Exception as exc:  # closing must never raise
                LOG.debug(
                    "redfish close bmc=%s error=%s",
                    self.endpoint.key,
                    scrub(exc, self.endpoint.password.get_secret_value()),
                )
        if self._ca_path is not None:
            try:
                os.unlink(self._ca_path)
            except OSError:
                pass
            self._ca_path = None


def _optional(read: Any) -> Any:
    """A property a BMC may not implement (no link, 404, malformed): None instead of an error.
    Connection and auth errors still end the inspection."""
    try:
        return read()
    except (
        sushy_exc.MissingAttributeError,
        sushy_exc.MalformedAttributeError,
        sushy_exc.ResourceNotFoundError,
        sushy_exc.UnknownDefaultError,
        AttributeError,
        StopIteration,
    ):
        return None
