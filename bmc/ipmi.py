"""IPMI 2.0 power driver (Intel IPMI v2.0 rev. 1.1), via python-ipmi's native RMCP+.

IPMI over LAN carries binary request/response messages in UDP datagrams to port 623.
IPMI 2.0 wraps them in RMCP+ sessions (section 13): the console asks for the channel's
authentication capabilities, opens a session proposing a *cipher suite* (table 22-20:
an authentication, an integrity and a confidentiality algorithm), proves the password
with the RAKP handshake, and from then on every message is signed (and, for suites 3
and 17, AES-encrypted). The chassis commands used here (section 28):

- Get Chassis Status (NetFn 00h, cmd 01h): bit 0 of byte 1 is "power is on".
- Chassis Control (NetFn 00h, cmd 02h): 0 power down, 1 power up, 2 power cycle,
  3 hard reset, 5 soft shutdown (ACPI).
- Set/Get System Boot Options (cmd 08h/09h) parameter 5, boot flags: byte 1 bit 7
  valid, bit 6 persistent (all future boots), bit 5 EFI boot; byte 2 bits 5:2 device
  (0001b PXE, 0010b disk, 0101b CD/DVD, 0110b BIOS setup).

Security choices: cipher suite 17 (HMAC-SHA256, AES-CBC-128) preferred, suite 3
(HMAC-SHA1, AES-CBC-128) accepted, nothing else; suite 0 (no authentication) is not
even implemented by python-ipmi, and a BMC without IPMI 2.0 is refused. The password
only ever reaches python-ipmi in memory: never the ``ipmitool`` interface, which puts
it on a command line. No keep-alive thread (``keep_alive_interval=0``): the session is
opened on the first call and kept by :class:`bmc.actions.BmcController` for the next
operations on the BMC until it has been idle ``PowerPolicy.session_idle`` seconds (well
under the 30-60 s after which BMCs expire idle sessions); a session that stops answering
is dropped and the controller authenticates again. The power commands also have awaitable
twins (``*_async``, :class:`bmc.driver.AsyncPowerDriver`) that open the session and send on it
through :mod:`bmc.ipmi_aio`, on the event loop. Only this module imports pyipmi (and
:mod:`bmc.ipmi_keys`, which corrects its SHA256 session keys, and :mod:`bmc.ipmi_aio`).
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyipmi
import pyipmi.interfaces
from pyipmi import errors as ipmi_errors
from pyipmi.chassis import BootDevice as IpmiBootDevice
from pyipmi.msgs import constants as ipmi_const

from bmc import (
    ipmi_aio,
    ipmi_keys,  # noqa: F401 - corrects python-ipmi's suite-17 session keys
)
from bmc.driver import DriverTimeouts
from bmc.errors import (
    BmcAuthError,
    BmcBusyError,
    BmcConfigError,
    BmcConnectionError,
    BmcError,
    BmcProtocolError,
    BmcTimeoutError,
    BmcUnsupportedError,
    scrub,
)
from bmc.inspection import Inspection, canonical_uuid
from bmc.types import BmcEndpoint, BootDevice, BootSetting, PowerState

LOG = logging.getLogger(__name__)

PREFERRED_CIPHER_SUITES: tuple[int, ...] = (17, 3)
"""Tried in this order; no other suite is ever proposed."""

BOOT_DEVICES: dict[BootDevice, IpmiBootDevice] = {
    BootDevice.pxe: IpmiBootDevice.PXE,
    BootDevice.disk: IpmiBootDevice.DEFAULT_HDD,
    BootDevice.bios: IpmiBootDevice.BIOS,
    BootDevice.cdrom: IpmiBootDevice.CD,
}
FROM_IPMI_BOOT: dict[IpmiBootDevice, BootDevice] = {v: k for k, v in BOOT_DEVICES.items()}

# Completion codes (IPMI 2.0 table 5-2) and RMCP+ status codes (table 13-15).
BUSY_CODES = frozenset({0xC0, 0xC3, 0xCE, 0xFF})
UNSUPPORTED_CODES = frozenset({0xC1, 0xC2, 0xC9, 0xCC, 0xD5, 0xD6})
AUTH_CODES = frozenset({0xD4})
AUTH_STATUS = frozenset(
    {
        ipmi_const.MSC_INVALID_ROLE,
        ipmi_const.MSC_UNAUTHORIZED_ROLE,
        ipmi_const.MSC_UNAUTHORIZED_NAME,
        ipmi_const.MSC_INVALID_NAME_LENGTH,
        ipmi_const.MSC_INVALID_INTEGRITY_CHECK_VALUE,
    }
)
SUITE_STATUS = frozenset(
    {
        ipmi_const.MSC_INVALID_AUTHENTICATION_ALGORITHM,
        ipmi_const.MSC_INVALID_INTEGRITY_ALGORITHM,
        ipmi_const.MSC_NO_MATCHING_AUTHENTICATION_PAYLOAD,
        ipmi_const.MSC_NO_MATCHING_INTEGRITY_PAYLOAD,
        ipmi_const.MSC_INVALID_CONFIDENTIALITY_ALGORITHM,
        ipmi_const.MSC_NO_CIPHER_SUITE_MATCH,
    }
)

# Which suite worked last time per BMC, so a fallback costs one extra round trip once.
_suite_cache: dict[str, int] = {}
_suite_lock = threading.Lock()


class _MaskedBytes(bytes):
    """The password as python-ipmi needs it (bytes for the RAKP HMACs), but unprintable."""

    def __repr__(self) -> str:
        return "b'***'"

    __str__ = __repr__


class _SuiteMismatch(Exception):
    """The BMC answered Open Session with other algorithms than proposed."""


class IpmiDriver:
    """:class:`bmc.driver.PowerDriver` over IPMI 2.0 RMCP+. Connects lazily."""

    def __init__(self, endpoint: BmcEndpoint, timeouts: DriverTimeouts | None = None) -> None:
        self.endpoint = endpoint
        self.timeouts = timeouts or DriverTimeouts()
        self._ipmi: Any = None

    def __repr__(self) -> str:
        return f"IpmiDriver({self.endpoint.key})"

    # -- session ------------------------------------------------------------------------

    def _open_with_suite(self, suite: int, on_loop: bool = False) -> Any:
        ep = self.endpoint
        iface = pyipmi.interfaces.create_interface(
            "rmcpplus", keep_alive_interval=0, max_retries=0, cipher_suite=suite
        )
        # NOTE: pyghmi's IPMI server (and some small BMCs) never answer the ASF
        # Presence Ping (RMCP class 6) that python-ipmi sends before Get Channel
        # Authentication Capabilities, so establish_session() times out after 2 s.
        # The capabilities request that follows is a real IPMI round trip and
        # already proves the BMC is there: skip the ping.
        iface.ping = lambda: None
        conn = pyipmi.create_connection(iface)
        conn.session.set_session_type_rmcp(ep.address, port=ep.port or 623)
        # NOTE: python-ipmi's Session.__str__ prints the password, and its rmcp interface
        # logs "Close Session %s" % session at DEBUG. Hand it bytes that print as ***.
        conn.session.set_auth_type_user(
            ep.username, _MaskedBytes(ep.password.get_secret_value().encode())
        )
        conn.session.set_priv_level("administrator")
        conn.target = pyipmi.Target(ipmb_address=0x20)
        iface.open()
        iface.set_timeout(self.timeouts.connect)
        loop_sock = None
        if on_loop:  # inside ipmi_aio.run_blocking: the handshake's receives wait on the loop
            iface._sock = loop_sock = ipmi_aio.LoopSocket(iface._sock)
        try:
            conn.session.establish()
        except ipmi_errors.DecodingError as exc:
            iface.close()
            if "other algorithms" in str(exc):
                raise _SuiteMismatch(str(exc)) from None
            raise
        except BaseException:
            iface.close()
            raise
        finally:
            if loop_sock is not None:
                iface._sock = loop_sock.release()
        return conn

    def _connect(self, on_loop: bool = False) -> Any:
        if self._ipmi is not None:
            return self._ipmi
        key = self.endpoint.key
        if ":" in self.endpoint.address:
            # python-ipmi's rmcp interface opens an AF_INET socket only.
            raise BmcUnsupportedError(
                bmc=key, operation="IPMI over IPv6", detail="python-ipmi speaks RMCP over IPv4 only"
            )
        with _suite_lock:
            cached = _suite_cache.get(key)
        suites = (cached,) if cached else PREFERRED_CIPHER_SUITES
        last: Exception | None = None
        for suite in suites:
            try:
                self._ipmi = self._open_with_suite(suite, on_loop)
            except _SuiteMismatch as exc:
                # NOTE: pyghmi's BMC implements cipher suite 3 only and answers an Open
                # Session Request for suite 17 with suite-3 algorithms instead of a
                # "no matching cipher suite" status, which python-ipmi reports as a
                # decoding error and does not fall back from. Force suite 3 then.
                LOG.debug("ipmi cipher suite fallback bmc=%s suite=%d", key, suite)
                last = exc
                continue
            except ipmi_errors.MessageStatusCodeError as exc:
                if exc.msc in SUITE_STATUS:
                    last = exc
                    continue
                raise
            with _suite_lock:
                _suite_cache[key] = suite
            LOG.debug("ipmi session open bmc=%s suite=%d", key, suite)
            return self._ipmi
        with _suite_lock:
            _suite_cache.pop(key, None)
        raise BmcUnsupportedError(
            bmc=key,
            operation="RMCP+ session",
            detail=f"no cipher suite of {PREFERRED_CIPHER_SUITES} accepted ({last})",
        )

    def _translate(self, exc: BaseException, operation: str) -> BmcError:
        ep = self.endpoint
        detail = scrub(f"{type(exc).__name__}: {exc}", ep.password.get_secret_value())
        if isinstance(
            exc,
            (TimeoutError, socket.timeout, ipmi_errors.RetryError, ipmi_errors.IpmiTimeoutError),
        ):
            return BmcTimeoutError(bmc=ep.key, seconds=self.timeouts.connect, detail=detail)
        if isinstance(exc, ipmi_errors.AuthenticationError):
            return BmcAuthError(bmc=ep.key, user=ep.username, detail=detail)
        if isinstance(exc, ipmi_errors.IpmiLongPasswordError):
            return BmcConfigError(bmc=ep.key, detail="password longer than 20 bytes")
        if isinstance(exc, ipmi_errors.MessageStatusCodeError):
            if exc.msc in AUTH_STATUS:
                return BmcAuthError(bmc=ep.key, user=ep.username, detail=detail)
            if exc.msc == ipmi_const.MSC_INSUFFICIENT_RESOURCES:
                return BmcBusyError(bmc=ep.key, detail=detail)
            return BmcProtocolError(bmc=ep.key, detail=detail)
        if isinstance(exc, ipmi_errors.CompletionCodeError):
            if exc.cc in BUSY_CODES:
                return BmcBusyError(bmc=ep.key, detail=detail)
            if exc.cc in AUTH_CODES:
                return BmcAuthError(bmc=ep.key, user=ep.username, detail=detail)
            if exc.cc in UNSUPPORTED_CODES:
                return BmcUnsupportedError(bmc=ep.key, operation=operation, detail=detail)
            return BmcProtocolError(bmc=ep.key, detail=detail)
        if isinstance(exc, ipmi_errors.NotSupportedError):
            return BmcUnsupportedError(bmc=ep.key, operation=operation, detail=detail)
        if isinstance(exc, (ipmi_errors.IpmiConnectionError, OSError)):
            return BmcConnectionError(bmc=ep.key, detail=detail)
        return BmcProtocolError(bmc=ep.key, detail=detail)

    def _call(self, operation: str, fn: Any) -> Any:
        with self._translated(operation):
            return fn(self._connect())

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        """Around a call on the session (blocking or awaited): any failure drops the session;
        what is not a :class:`BmcError` is translated at the edge, nothing escapes untyped."""
        try:
            yield
        except BmcError:
            self._drop()
            raise
        except Exception as exc:
            self._drop()
            raise self._translate(exc, operation) from None

    def _drop(self) -> None:
        """Forget a session that may be broken; the next call opens a fresh one."""
        conn, self._ipmi = self._ipmi, None
        if conn is not None:
            ipmi_aio.detach(conn)  # on the loop's thread: a failed exchange
            try:
                conn.interface.close()
            except Exception:  # noqa: S110 - closing a UDP socket; nothing to report
                pass

    # -- PowerDriver --------------------------------------------------------------------

    # The power commands go raw (``_chassis``): they are most of a bulk operation's messages,
    # and python-ipmi's message objects cost a quarter of the client's CPU per message.

    def get_power_state(self) -> PowerState:
        def run(conn: Any) -> PowerState:
            rsp = _chassis(conn, b"\x01", 2)  # Get Chassis Status: byte 1 bit 0 = power on
            return PowerState.on if rsp[1] & 1 else PowerState.off

        state: PowerState = self._call("get power state", run)
        return state

    def power_on(self) -> None:
        self._call("power on", lambda c: _chassis(c, b"\x02\x01"))

    def power_off(self, graceful: bool) -> None:
        if graceful:
            self._call("soft power off", lambda c: _chassis(c, b"\x02\x05"))
        else:
            self._call("power off", lambda c: _chassis(c, b"\x02\x00"))

    def power_cycle(self) -> None:
        self._call("power cycle", lambda c: _chassis(c, b"\x02\x02"))

    def reset(self) -> None:
        self._call("reset", lambda c: _chassis(c, b"\x02\x03"))

    def set_boot_device(self, device: BootDevice, persistent: bool, uefi: bool) -> None:
        self._call(
            "set boot device",
            lambda c: c.set_boot_options(
                BOOT_DEVICES[device], "efi" if uefi else "legacy", persistent
            ),
        )

    def get_boot_device(self) -> BootSetting:
        def run(conn: Any) -> BootSetting:
            data = conn.get_system_boot_options(5)  # boot flags
            raw_device = (data[1] >> 2) & 0x0F
            ipmi_device = {
                1: IpmiBootDevice.PXE,
                2: IpmiBootDevice.DEFAULT_HDD,
                5: IpmiBootDevice.CD,
                6: IpmiBootDevice.BIOS,
            }.get(raw_device)
            return BootSetting(
                device=FROM_IPMI_BOOT.get(ipmi_device) if ipmi_device else None,
                persistent=bool(data[0] & 0x40),
                uefi=bool(data[0] & 0x20),
            )

        setting: BootSetting = self._call("get boot device", run)
        return setting

    def inspect(self) -> Inspection:
        """:class:`bmc.inspection.Inspector`: Get System GUID (else Get Device GUID) and the FRU
        product area. A command the BMC does not implement is skipped, not an error."""

        def run(conn: Any) -> Inspection:
            sources = []
            guid = _optional(lambda: _system_guid(conn))
            if guid is not None:
                sources.append("ipmi:system-guid")
            device = _optional(lambda: conn.get_device_guid().device_guid_string)
            if device is not None:
                sources.append("ipmi:device-guid")
            product = _optional(lambda: conn.get_fru_inventory().product_info_area)
            fields: dict[str, str | None] = {}
            if product is not None:
                sources.append("ipmi:fru")
                for name in ("manufacturer", "name", "serial_number"):
                    value = getattr(product, name, None)
                    fields[name] = None if value is None else (str(value).strip() or None)
            return Inspection(
                uuid=canonical_uuid(guid),
                serial=fields.get("serial_number"),
                manufacturer=fields.get("manufacturer"),
                model=fields.get("name"),
                bmc_guid=canonical_uuid(device),
                source=",".join(sources),
            )

        result: Inspection = self._call("inspect", run)
        return result

    # -- AsyncPowerDriver: the power commands on the event loop (bmc.ipmi_aio) ---------------

    def needs_session(self) -> bool:
        return self._ipmi is None

    def detach_loop(self) -> None:
        if self._ipmi is not None:
            ipmi_aio.detach(self._ipmi)

    async def open_session_async(self) -> None:
        """Open the session on the event loop: python-ipmi's RMCP+ handshake, run unchanged by
        :func:`bmc.ipmi_aio.run_blocking`, its receives awaited (no thread). The cipher suite
        fallback, the errors and their translation are those of the blocking calls."""
        with self._translated("RMCP+ session"):
            await ipmi_aio.run_blocking(functools.partial(self._connect, on_loop=True))

    async def get_power_state_async(self) -> PowerState:
        rsp = await self._chassis_async("get power state", b"\x01", 2)
        return PowerState.on if rsp[1] & 1 else PowerState.off

    async def power_on_async(self) -> None:
        await self._chassis_async("power on", b"\x02\x01")

    async def power_off_async(self, graceful: bool) -> None:
        if graceful:
            await self._chassis_async("soft power off", b"\x02\x05")
        else:
            await self._chassis_async("power off", b"\x02\x00")

    async def power_cycle_async(self) -> None:
        await self._chassis_async("power cycle", b"\x02\x02")

    async def reset_async(self) -> None:
        await self._chassis_async("reset", b"\x02\x03")

    async def _chassis_async(self, operation: str, request: bytes, length: int = 1) -> bytes:
        """A chassis command on the loop; without a session it is opened here, blocking (callers
        on a loop open it first: :meth:`open_session_async`)."""
        with self._translated(operation):
            rsp = await ipmi_aio.send_raw(self._connect(), ipmi_const.NETFN_CHASSIS, request)
            return _chassis_checked(rsp, request, length)

    def close(self) -> None:
        conn, self._ipmi = self._ipmi, None
        if conn is None:
            return
        try:
            conn.interface.set_timeout(min(self.timeouts.connect, 1.0))
            conn.session.close()
        except Exception as exc:  # closing must never raise
            LOG.debug("ipmi close bmc=%s error=%s", self.endpoint.key, type(exc).__name__)
        finally:
            try:
                conn.interface.close()
            except Exception:  # noqa: S110 - closing a UDP socket; nothing to report
                pass


def _chassis(conn: Any, request: bytes, length: int = 1) -> bytes:
    """A chassis command (NetFn 00h) sent raw: ``request`` is the command byte and its data; the
    response (completion code first) must be ``length`` bytes at least and complete normally."""
    return _chassis_checked(
        bytes(conn.send_raw(0, ipmi_const.NETFN_CHASSIS, request)), request, length
    )


def _chassis_checked(rsp: bytes, request: bytes, length: int) -> bytes:
    if rsp[:1] != b"\x00":
        raise ipmi_errors.CompletionCodeError(rsp[0] if rsp else 0xFF)
    if len(rsp) < length:
        raise ipmi_errors.DecodingError(f"short response to chassis command {request[0]:#04x}")
    return rsp


def _system_guid(conn: Any) -> str:
    """Get System GUID (App 37h): 16 bytes, SMBIOS byte order (the first three fields
    little-endian, as ``uuid.UUID(bytes_le=...)`` reads them). python-ipmi has no message for
    it, so it goes raw."""
    rsp = bytes(conn.send_raw(0x00, 0x06, b"\x37"))
    if len(rsp) < 17 or rsp[0] != 0:
        raise ipmi_errors.CompletionCodeError(rsp[0] if rsp else 0xFF)
    return str(uuidlib.UUID(bytes_le=rsp[1:17]))


def _optional(read: Any) -> Any:
    """A command the BMC does not implement (or answers oddly): None. Timeouts and
    connection errors still end the inspection."""
    try:
        return read()
    except (
        ipmi_errors.CompletionCodeError,
        ipmi_errors.NotSupportedError,
        ipmi_errors.DecodingError,
        ValueError,
        IndexError,
        TypeError,
    ):
        return None
