"""A lean simulated IPMI 2.0 BMC fleet for the power benchmarks: one thread, one selector.

Each BMC is a UDP port of 127.0.0.1 speaking RMCP+ (IPMI v2.0 section 13) as a real BMC does:
Get Channel Authentication Capabilities and Get Channel Cipher Suites outside a session, Open
Session, RAKP 1-4 (RAKP-HMAC-SHA1 / -SHA256, the session keys K1/K2 of section 13.32), then every
message signed (HMAC-SHA1-96 / HMAC-SHA256-128) and AES-CBC-128 encrypted: cipher suites 3 and
17, the two bronze's driver proposes. Inside a session: Set Session Privilege Level, Close
Session, Get Device ID, Get System GUID, Get Chassis Status, Chassis Control and Get/Set System
Boot Options (parameter 5, the boot flags, stored as written). Power changes take ``--settle``
seconds, like the pyghmi simulator of ``tests/peers/bmc_peers.py`` (the reference this replaces
in the benches because it costs ~4x the CPU per verified cycle: a thread per process waking the
serving thread through an Event, a Python object per packet); ``ipmitool -I lanplus`` works
against it (``tests/bmc/test_ipmi_sim.py``). Not implemented: sequence-number windows (any
sequence number is accepted), K_G, users other than the one given, privilege checks.

    BRONZE_SIM_PASSWORD=pw python -m bench.ipmi_sim --ports 40001,40002 --settle 0.2

prints ``{"ready": [ports]}`` once listening, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

LOCAL = "127.0.0.1"
RMCP_IPMI = b"\x06\x00\xff\x07"
ASF_IANA = b"\x00\x00\x11\xbe"
SYSTEM_UUID = uuid.UUID("27946b59-9e44-4fa7-8e91-f3527a1ef094")  # as tests/peers/bmc_peers
# cipher suite -> (RAKP/K1/K2 hash, integrity hash, auth code and RAKP4 ICV length)
SUITES = {3: (1, 1, 1, "sha1", 12), 17: (3, 4, 1, "sha256", 16)}
SUITE_RECORDS = bytes([0xC0, 3, 0x01, 0x41, 0x81, 0xC0, 17, 0x03, 0x44, 0x81])
SESSION_IDLE = 60.0  # sessions unused this long are forgotten, as BMCs do


def checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


@dataclass
class Session:
    console_sid: int
    suite: int
    rm: bytes = b""
    rc: bytes = b""
    role: bytes = b""  # ROLEm ULENm UNAMEm, as the RAKP HMACs use them
    k1: bytes = b""
    k2: bytes = b""
    active: bool = False
    priv: int = 4
    out_seq: int = 0
    used: float = field(default_factory=time.monotonic)


class Bmc:
    """One simulated BMC: power with a settle delay, boot flags, RMCP+ sessions."""

    def __init__(self, sock: socket.socket, user: bytes, password: bytes, settle: float) -> None:
        self.sock, self.user, self.password, self.settle = sock, user, password, settle
        self.port = sock.getsockname()[1]
        self.power = "off"
        self.pending: tuple[str, float] | None = None
        self.boot_flags = bytes(5)
        self.sessions: dict[int, Session] = {}
        self.events: Path | None = None

    # -- power ----------------------------------------------------------------------------

    def event(self, what: str) -> None:
        if self.events is not None:
            with open(self.events, "a") as fh:
                fh.write(f"{self.port} {what}\n")

    def state(self) -> str:
        if self.pending and time.monotonic() >= self.pending[1]:
            self.power, self.pending = self.pending[0], None
        return self.power

    def chassis_control(self, code: int) -> int:
        """Completion code of Chassis Control ``code`` (IPMI 2.0 section 28.3)."""
        names = {0: "off", 1: "on", 2: "cycle", 3: "reset", 5: "soft-off"}
        if code not in names:
            return 0xCC
        self.event(names[code])
        now = self.state()
        if code == 2:
            self.power, self.pending = "off", ("on", time.monotonic() + self.settle)
        elif code == 3:
            return 0 if now == "on" else 0xD5  # reset while off: not in present state
        elif (want := "on" if code == 1 else "off") != now:
            self.pending = (want, time.monotonic() + self.settle)
        return 0

    # -- packets --------------------------------------------------------------------------

    def datagram(self, data: bytes, peer: tuple[str, int]) -> bytes | None:
        """The answer to one datagram, or None."""
        if len(data) < 5 or data[0] != 6:
            return None
        if data[3] == 6:  # ASF Presence Ping -> Pong
            if len(data) >= 12 and data[4:8] == ASF_IANA and data[8] == 0x80:
                head = ASF_IANA + bytes([0x40, data[9], 0, 16])  # Pong, the ping's tag
                body = ASF_IANA + bytes(4) + bytes([0x81, 0]) + bytes(6)  # IPMI supported
                return b"\x06\x00\xff\x06" + head + body
            return None
        if data[3] != 7:
            return None
        if data[4] == 0:  # IPMI v1.5 session header, no session: Get Channel Auth Caps
            msg = data[14 : 14 + data[13]]
            rsp = self.ipmi(msg, None)
            return RMCP_IPMI + struct.pack("<BIIB", 0, 0, 0, len(rsp)) + rsp if rsp else None
        if data[4] != 6 or len(data) < 16:
            return None
        ptype, sid, _seq, length = struct.unpack_from("<BIIH", data, 5)
        payload = data[16 : 16 + length]
        kind = ptype & 0x3F
        if sid == 0:
            if kind == 0x10:
                return self.open_session(payload)
            if kind == 0x12:
                return self.rakp1(payload)
            if kind == 0x14:
                return self.rakp3(payload)
            if kind == 0:
                rsp = self.ipmi(payload, None)
                return self.pack(0, rsp, 0) if rsp else None
            return None
        s = self.sessions.get(sid)
        if s is None or not s.active or kind != 0 or ptype & 0xC0 != 0xC0:
            return None  # unknown or dead session: a real BMC stays silent too
        n = SUITES[s.suite][4]
        digest = SUITES[s.suite][3]
        if not hmac.compare_digest(hmac.digest(s.k1, data[4:-n], digest)[:n], data[-n:]):
            return None
        if len(payload) < 32 or len(payload) % 16:
            return None
        d = Cipher(algorithms.AES(s.k2[:16]), modes.CBC(payload[:16])).decryptor()
        clear = d.update(payload[16:]) + d.finalize()
        msg = clear[: -1 - clear[-1]]
        s.used = time.monotonic()
        rsp = self.ipmi(msg, s)
        if rsp is None:
            return None
        out = self.pack(s.console_sid, rsp, 0, s)
        if len(msg) > 5 and msg[1] >> 2 == 6 and msg[5] == 0x3C and rsp[6] == 0:
            self.sessions.pop(sid, None)  # Close Session: answered inside it, then gone
        return out

    def pack(self, sid: int, payload: bytes, ptype: int, s: Session | None = None) -> bytes:
        """An RMCP+ message to the console (signed and encrypted inside a session)."""
        if s is None:
            return RMCP_IPMI + struct.pack("<BBIIH", 6, ptype, sid, 0, len(payload)) + payload
        s.out_seq += 1
        pad = -(len(payload) + 1) % 16
        iv = os.urandom(16)
        e = Cipher(algorithms.AES(s.k2[:16]), modes.CBC(iv)).encryptor()
        body = iv + e.update(payload + bytes(range(1, pad + 1)) + bytes([pad])) + e.finalize()
        pdu = struct.pack("<BBIIH", 6, ptype | 0xC0, sid, s.out_seq, len(body)) + body
        ipad = -(len(pdu) + 2) % 4
        pdu += b"\xff" * ipad + bytes([ipad, 7])
        n = SUITES[s.suite][4]
        return RMCP_IPMI + pdu + hmac.digest(s.k1, pdu, SUITES[s.suite][3])[:n]

    # -- session setup (IPMI 2.0 sections 13.17 - 13.23, 13.31, 13.32) ---------------------

    def open_session(self, p: bytes) -> bytes | None:
        if len(p) < 32:
            return None
        self.event("session")
        tag, console_sid = p[0], struct.unpack_from("<I", p, 4)[0]
        algos = (p[12] & 0x3F, p[20] & 0x3F, p[28] & 0x3F)
        suite = next((k for k, v in SUITES.items() if v[:3] == algos), None)
        status = 0 if suite is not None else 0x11  # no cipher suite match
        now = time.monotonic()
        for sid in [k for k, v in self.sessions.items() if now - v.used > SESSION_IDLE]:
            del self.sessions[sid]
        sid = 0
        if suite is not None:
            while sid == 0 or sid in self.sessions:
                sid = struct.unpack("<I", os.urandom(4))[0]
            self.sessions[sid] = Session(console_sid, suite)
        rsp = struct.pack("<BBBxII", tag, status, 4, console_sid, sid)
        if suite is not None:
            rsp += b"".join(struct.pack("<BxxBBxxx", i, 8, a) for i, a in enumerate(algos))
        return self.pack(0, rsp, 0x11)

    def rakp1(self, p: bytes) -> bytes | None:
        if len(p) < 28:
            return None
        tag, sid = p[0], struct.unpack_from("<I", p, 4)[0]
        s = self.sessions.get(sid)
        if s is None or s.active:
            return self.pack(0, struct.pack("<BBxxI", tag, 0x02, 0), 0x13)  # invalid session
        s.rm, ulen = p[8:24], p[27]
        name = p[28 : 28 + ulen]
        s.role = bytes([p[24], ulen]) + name
        s.priv = p[24] & 0x0F
        if name != self.user:
            del self.sessions[sid]
            return self.pack(0, struct.pack("<BBxxI", tag, 0x0D, s.console_sid), 0x13)
        s.rc = os.urandom(16)
        guid = SYSTEM_UUID.bytes_le
        digest = SUITES[s.suite][3]
        sids = struct.pack("<II", s.console_sid, sid)
        code = hmac.digest(self.password, sids + s.rm + s.rc + guid + s.role, digest)
        return self.pack(0, struct.pack("<BBxxI", tag, 0, s.console_sid) + s.rc + guid + code, 0x13)

    def rakp3(self, p: bytes) -> bytes | None:
        if len(p) < 8:
            return None
        tag, status, sid = p[0], p[1], struct.unpack_from("<I", p, 4)[0]
        s = self.sessions.get(sid)
        if s is None or s.active or not s.rc:
            return self.pack(0, struct.pack("<BBxxI", tag, 0x02, 0), 0x15)
        if status != 0:  # the console refused RAKP 2 (wrong password): forget the session
            del self.sessions[sid]
            return None
        digest, n = SUITES[s.suite][3], SUITES[s.suite][4]
        sid_m = struct.pack("<I", s.console_sid)
        want = hmac.digest(self.password, s.rc + sid_m + s.role, digest)
        if not hmac.compare_digest(want, p[8:]):
            del self.sessions[sid]
            return self.pack(0, struct.pack("<BBxxI", tag, 0x0F, s.console_sid), 0x15)
        sik = hmac.digest(self.password, s.rm + s.rc + s.role, digest)
        s.k1 = hmac.digest(sik, b"\x01" * 20, digest)  # Const1/Const2: 20 bytes (13.32)
        s.k2 = hmac.digest(sik, b"\x02" * 20, digest)
        s.active = True
        icv = hmac.digest(sik, s.rm + struct.pack("<I", sid) + SYSTEM_UUID.bytes_le, digest)
        return self.pack(0, struct.pack("<BBxxI", tag, 0, s.console_sid) + icv[:n], 0x15)

    # -- IPMI commands ----------------------------------------------------------------------

    def ipmi(self, msg: bytes, s: Session | None) -> bytes | None:
        """The IPMI response message to request ``msg`` (IPMB-style framing, section 13.8)."""
        if len(msg) < 7:
            return None
        netfn, cmd, data = msg[1] >> 2, msg[5], msg[6:-1]
        cc, out = self.command(netfn, cmd, data, s)
        head = bytes([msg[3], (netfn + 1) << 2 | (msg[4] & 3)])
        body = bytes([msg[0], msg[4] & 0xFC | (msg[1] & 3), cmd, cc]) + out
        return head + bytes([checksum(head)]) + body + bytes([checksum(body)])

    def command(self, netfn: int, cmd: int, data: bytes, s: Session | None) -> tuple[int, bytes]:
        if netfn == 6 and cmd == 0x38:  # Get Channel Authentication Capabilities
            return 0, bytes([1, 0x80, 0x04, 0x02, 0, 0, 0, 0])  # IPMI 2.0, no 1.5 auth
        if netfn == 6 and cmd == 0x54:  # Get Channel Cipher Suites
            index = data[2] & 0x3F if len(data) > 2 else 0
            return 0, bytes([1]) + SUITE_RECORDS[16 * index : 16 * index + 16]
        if s is None:
            return 0xD4, b""  # insufficient privilege: outside a session
        if netfn == 6 and cmd == 0x3B:  # Set Session Privilege Level
            if data and data[0]:
                s.priv = data[0] & 0x0F
            return 0, bytes([s.priv])
        if netfn == 6 and cmd == 0x3C:  # Close Session
            return 0, b""
        if netfn == 6 and cmd == 0x01:  # Get Device ID
            return 0, bytes([0x20, 0x01, 0x01, 0x00, 0x02, 0xBF, 0, 0, 0, 0, 0])
        if netfn == 6 and cmd == 0x37:  # Get System GUID
            return 0, SYSTEM_UUID.bytes_le
        if netfn == 0 and cmd == 0x01:  # Get Chassis Status
            return 0, bytes([1 if self.state() == "on" else 0, 0, 0])
        if netfn == 0 and cmd == 0x02 and data:  # Chassis Control
            return self.chassis_control(data[0] & 0x0F), b""
        if netfn == 0 and cmd == 0x08 and data:  # Set System Boot Options
            if data[0] & 0x7F == 5:
                self.boot_flags = bytes(data[1:6]).ljust(5, b"\x00")
                self.event("boot " + self.boot_flags.hex())
            return 0, b""
        if netfn == 0 and cmd == 0x09 and data:  # Get System Boot Options
            if data[0] & 0x7F == 5:
                return 0, bytes([1, 5]) + self.boot_flags
            return 0x80, b""  # parameter not supported
        return 0xC1, b""  # invalid command


def serve(ports: list[int], user: str, password: str, settle: float, events: Path | None) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOCAL, port))
        sock.setblocking(False)
        bmc = Bmc(sock, user.encode(), password.encode(), settle)
        bmc.events = events
        sel.register(sock, selectors.EVENT_READ, bmc)
    print(json.dumps({"ready": ports}), flush=True)
    while True:
        for key, _ in sel.select():
            bmc = key.data
            while True:
                try:
                    data, peer = bmc.sock.recvfrom(512)
                except BlockingIOError:
                    break
                answer = bmc.datagram(data, peer)
                if answer is not None:
                    try:
                        bmc.sock.sendto(answer, peer)
                    except OSError:  # a full socket buffer: the console retries
                        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--user", default="admin")
    ap.add_argument("--ports", required=True, help="comma-separated UDP ports of 127.0.0.1")
    ap.add_argument("--settle", type=float, default=0.3)
    ap.add_argument("--events", type=Path, default=None, help="append 'port what' lines here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    password = os.environ.get("BRONZE_SIM_PASSWORD", "password")
    if len(password.encode()) > 20:
        ap.error("BRONZE_SIM_PASSWORD: IPMI passwords are at most 20 bytes")
    serve([int(p) for p in args.ports.split(",")], args.user, password, args.settle, args.events)


if __name__ == "__main__":
    main()
