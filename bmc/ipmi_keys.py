"""A correction to python-ipmi's RMCP+ session keys, applied when :mod:`bmc.ipmi` is imported.

IPMI v2.0 section 13.32 (and ipmitool) derive the integrity key K1 and the encryption key K2 as
HMAC_SIK over 20 bytes of 01h / 02h, whatever the authentication hash. python-ipmi 0.6.1 uses
the digest size instead (32 bytes for SHA256): with cipher suite 17 the RAKP handshake passed,
then every signed message failed (``tests/bmc/test_ipmi_sim.py``). Suite 3 (SHA1, 20 bytes)
was never affected.
"""

from __future__ import annotations

import hmac
from typing import Any

from pyipmi.interfaces import rmcpplus


class _SessionKeys(rmcpplus.SessionKeys):
    """K1/K2 as IPMI v2.0 section 13.32 (and ipmitool) make them: HMAC_SIK of 20 bytes of 01h/02h
    whatever the hash. python-ipmi 0.6.1 uses the digest size (32 bytes for SHA256): with suite
    17 the handshake passed, then every signed message failed (``tests/bmc/test_ipmi_sim.py``)."""

    def __init__(self, suite: Any, sik: bytes) -> None:
        super().__init__(suite, sik)
        digest = rmcpplus.AUTH_ALGORITHMS[suite.authentication][0]
        self.k1 = hmac.new(sik, b"\x01" * 20, digest).digest()
        self.k2 = hmac.new(sik, b"\x02" * 20, digest).digest()


# NOTE: establish_session() builds its keys through this module-level name (only used here).
rmcpplus.SessionKeys = _SessionKeys  # type: ignore[misc]
