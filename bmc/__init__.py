"""bronze's power plane: talk to BMCs over Redfish (DSP0266) and IPMI 2.0.

Use :class:`BmcController` (policy: retries, read-back, deadlines, per-BMC
serialization, global limit) with a :class:`BmcEndpoint`; drivers
(:mod:`bmc.redfish`, :mod:`bmc.ipmi`) are the one-call-per-method layer below it and
are imported lazily so that importing ``bmc`` does not import sushy or pyipmi.

    controller = BmcController()
    result = await controller.power(endpoint, PowerAction.cycle)
    if not result.ok: ...

See docs/bmc.md.
"""

from bmc.actions import (
    BmcController,
    BmcResult,
    Clock,
    PowerPolicy,
    SystemClock,
    default_driver_factory,
)
from bmc.driver import DriverFactory, DriverTimeouts, PowerDriver
from bmc.errors import (
    BmcAddressRefused,
    BmcAuthError,
    BmcBusyError,
    BmcConfigError,
    BmcConnectionError,
    BmcDeadlineExceeded,
    BmcError,
    BmcFatalError,
    BmcProtocolError,
    BmcRedirectRefused,
    BmcServerError,
    BmcTimeoutError,
    BmcTlsError,
    BmcTransientError,
    BmcUnsupportedError,
    BmcVerifyTimeout,
)
from bmc.netpolicy import CheckedAddress, NetPolicy, check_address
from bmc.probe import probe, resolve_auto
from bmc.types import (
    BmcEndpoint,
    BootDevice,
    BootSetting,
    DriverKind,
    PowerAction,
    PowerState,
    Secret,
)

__all__ = [
    "BmcAddressRefused",
    "BmcAuthError",
    "BmcBusyError",
    "BmcConfigError",
    "BmcConnectionError",
    "BmcController",
    "BmcDeadlineExceeded",
    "BmcEndpoint",
    "BmcError",
    "BmcFatalError",
    "BmcProtocolError",
    "BmcRedirectRefused",
    "BmcResult",
    "BmcServerError",
    "BmcTimeoutError",
    "BmcTlsError",
    "BmcTransientError",
    "BmcUnsupportedError",
    "BmcVerifyTimeout",
    "BootDevice",
    "BootSetting",
    "CheckedAddress",
    "Clock",
    "DriverFactory",
    "DriverKind",
    "DriverTimeouts",
    "NetPolicy",
    "PowerAction",
    "PowerDriver",
    "PowerPolicy",
    "PowerState",
    "Secret",
    "SystemClock",
    "check_address",
    "default_driver_factory",
    "probe",
    "resolve_auto",
]
