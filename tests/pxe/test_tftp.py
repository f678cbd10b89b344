"""The TFTP server on real UDP sockets: standard clients, options, confinement, robustness."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tftpy

from pxe.backend import ListSink, TimelineKind
from pxe.tftp.server import TftpServer
from tests.peers.netlab import LoopThread, require_tools
from tests.support.ports import free_udp_port as free_port
from tests.support.wait import eventually


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture(params=[64, 0], ids=["threads", "loop_only"])
def tftp(
    loop: LoopThread, tftp_root: Path, sink: ListSink, request: pytest.FixtureRequest
) -> Iterator[TftpServer]:
    """Every test runs twice: lock-step transfers on their own threads, and all on the loop."""
    srv = TftpServer(
        tftp_root,
        address="127.0.0.1",
        port=free_port(),
        sink=sink,
        timeout=0.3,
        retries=2,
        max_threads=request.param,
    )
    loop.run(srv.start())
    yield srv
    loop.run(srv.stop())


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - a checksum, not security


class Raw:
    """A minimal TFTP client for the cases standard clients cannot produce."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def send(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        self.sock.sendto(data, addr or ("127.0.0.1", self.port))

    def recv(self, timeout: float = 1.0) -> tuple[bytes, tuple[str, int]] | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(70000)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


def rrq(name: bytes, *opts: bytes, mode: bytes = b"octet") -> bytes:
    return b"\x00\x01" + name + b"\0" + mode + b"\0" + b"".join(o + b"\0" for o in opts)


def fetch(port: int, name: bytes, *opts: bytes, ack_every: int = 1) -> tuple[bytes, dict[str, str]]:
    """Downloads with RRQ options; ACKs every `ack_every` blocks (the window) and at the end."""
    c = Raw(port)
    try:
        c.send(rrq(name, *opts))
        got = c.recv()
        assert got is not None, "no answer"
        data, peer = got
        oack: dict[str, str] = {}
        blksize, out, expect = 512, bytearray(), 1
        if data[:2] == b"\x00\x06":
            parts = data[2:-1].split(b"\0")
            oack = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
            blksize = int(oack.get("blksize", 512))
            c.send(b"\x00\x04\x00\x00", peer)
            got = c.recv()
            assert got is not None
            data, peer = got
        since_ack = 0
        while True:
            op, block = struct.unpack("!HH", data[:4])
            assert op == 3, data[:40]
            assert block == expect & 0xFFFF, (block, expect)
            out += data[4:]
            expect += 1
            since_ack += 1
            last = len(data) - 4 < blksize
            if last or since_ack == ack_every:
                c.send(struct.pack("!HH", 4, block), peer)
                since_ack = 0
            if last:
                return bytes(out), oack
            got = c.recv()
            assert got is not None, f"stalled at block {expect}"
            data, peer = got
    finally:
        c.close()


def assert_served(port: int, root: Path) -> None:
    """The server still answers, within a second."""
    t0 = time.monotonic()
    data, _ = fetch(port, b"small.bin")
    assert data == (root / "small.bin").read_bytes()
    assert time.monotonic() - t0 < 1.0


# -- standard clients -------------------------------------------------------------------------
@pytest.mark.parametrize("blksize", [512, 1468, 8192, 65464], ids=lambda b: f"blksize{b}")
def test_curl(tftp: TftpServer, tftp_root: Path, tmp_path: Path, blksize: int) -> None:
    require_tools("curl")
    for name in ("big.bin", "exact.bin", "empty.bin", "sub/inner.bin", "inside_link"):
        out = tmp_path / "out"
        res = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "20",
                "--tftp-blksize",
                str(blksize),
                "-o",
                str(out),
                f"tftp://127.0.0.1:{tftp.bound_port}/{name}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert md5(out.read_bytes()) == md5((tftp_root / name).read_bytes()), name


def test_tftp_hpa_client(tftp: TftpServer, tftp_root: Path, tmp_path: Path) -> None:
    require_tools("tftp")
    res = subprocess.run(
        ["tftp", "127.0.0.1", str(tftp.bound_port), "-m", "binary", "-c", "get", "big.bin"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr + res.stdout
    assert md5((tmp_path / "big.bin").read_bytes()) == md5((tftp_root / "big.bin").read_bytes())


def test_tftpy_client(tftp: TftpServer, tftp_root: Path, tmp_path: Path, sink: ListSink) -> None:
    client = tftpy.TftpClient("127.0.0.1", tftp.bound_port, options={"blksize": 1400, "tsize": 0})
    out = tmp_path / "via-tftpy"
    client.download("big.bin", str(out))
    assert md5(out.read_bytes()) == md5((tftp_root / "big.bin").read_bytes())
    done = eventually(lambda: [e for e in sink.events if e.kind is TimelineKind.TFTP_COMPLETE])
    assert done[-1].detail["file"] == "big.bin"
    assert done[-1].detail["bytes"] == (tftp_root / "big.bin").stat().st_size
    assert tftp.stats.bytes_sent >= done[-1].detail["bytes"]  # type: ignore[operator]


@pytest.mark.parametrize("window", [1, 4, 16, 64], ids=lambda w: f"window{w}")
def test_windowsize(tftp: TftpServer, tftp_root: Path, window: int) -> None:
    data, oack = fetch(
        tftp.bound_port,
        b"big.bin",
        b"blksize",
        b"1468",
        b"windowsize",
        str(window).encode(),
        b"tsize",
        b"0",
        ack_every=window,
    )
    assert oack == {
        "blksize": "1468",
        "windowsize": str(window),
        "tsize": str((tftp_root / "big.bin").stat().st_size),
    }
    assert data == (tftp_root / "big.bin").read_bytes()


def test_block_number_rollover(tftp: TftpServer, tftp_root: Path) -> None:
    payload = os.urandom(8 * 70000 + 3)  # 70,001 blocks of 8 bytes: wraps past 65535
    (tftp_root / "roll.bin").write_bytes(payload)
    data, _ = fetch(
        tftp.bound_port, b"roll.bin", b"blksize", b"8", b"windowsize", b"64", ack_every=64
    )
    assert data == payload


# -- robustness ---------------------------------------------------------------------------------
TRAVERSAL = [
    b"../../etc/passwd",
    b"../secret",
    b"/etc/passwd",
    b"..\\..\\etc\\passwd",
    b"sub\\..\\..\\secret",
    b"%2e%2e/%2e%2e/etc/passwd",
    b"%2e%2e%2fsecret",
    b"sub/../../secret",
    b"./../secret",
    b"sub/../sub/../../secret",
    b"....//secret",
    b"escape",
    b"escape_dir/secret",
    b"//etc/passwd",
    b"\xff",
    b"small\xff.bin",
    b"small.bin\x01",
    b"\x80\x81",
]


@pytest.mark.parametrize("name", TRAVERSAL, ids=[repr(n)[2:-1] for n in TRAVERSAL])
def test_confinement(tftp: TftpServer, tftp_root: Path, name: bytes) -> None:
    c = Raw(tftp.bound_port)
    try:
        c.send(rrq(name))
        got = c.recv()
        assert got is not None and got[0][:2] == b"\x00\x05", got
        assert got[0][2:4] in (b"\x00\x01", b"\x00\x02"), got  # not found / access violation
        assert b"SECRET" not in got[0]
    finally:
        c.close()
    assert_served(tftp.bound_port, tftp_root)


def test_wrq_refused_nothing_written(tftp: TftpServer, tftp_root: Path) -> None:
    before = sorted(p.name for p in tftp_root.rglob("*"))
    c = Raw(tftp.bound_port)
    try:
        for name in (b"new.bin", b"small.bin", b"../written"):
            c.send(b"\x00\x02" + name + b"\0octet\0")
            got = c.recv()
            assert got is not None and got[0][:4] == b"\x00\x05\x00\x02"
            c.send(b"\x00\x03\x00\x01hello")  # a DATA block anyway
            err = c.recv(0.5)
            assert err is None or err[0][:2] == b"\x00\x05"
    finally:
        c.close()
    assert sorted(p.name for p in tftp_root.rglob("*")) == before
    assert not (tftp_root.parent / "written").exists()
    assert (tftp_root / "small.bin").stat().st_size == 3000
    assert_served(tftp.bound_port, tftp_root)


@pytest.mark.parametrize(
    "opts",
    [
        (b"blksize", b"abc"),
        (b"blksize", b"0"),
        (b"blksize", b"70000"),
        (b"blksize", b"-5"),
        (b"tsize", b"-1"),
        (b"timeout", b"0"),
        (b"timeout", b"999"),
        (b"windowsize", b"0"),
        (b"windowsize", b"x"),
        (b"blksize",),
        (b"unknown", b"1"),
    ],
    ids=[
        "blksize_abc",
        "blksize_0",
        "blksize_70000",
        "blksize_neg",
        "tsize_neg",
        "timeout_0",
        "timeout_999",
        "window_0",
        "window_x",
        "option_without_value",
        "unknown_option",
    ],
)
def test_bad_options_ignored(tftp: TftpServer, tftp_root: Path, opts: tuple[bytes, ...]) -> None:
    data, oack = fetch(tftp.bound_port, b"small.bin", *opts)
    assert oack == {}  # every bad option is ignored: plain RFC 1350 transfer
    assert data == (tftp_root / "small.bin").read_bytes()


GARBAGE = {
    "empty": b"",
    "one_byte": b"\x00",
    "rrq_no_nul": b"\x00\x01small.bin",
    "rrq_no_mode_nul": b"\x00\x01small.bin\x00octet",
    "rrq_no_mode": b"\x00\x01small.bin\x00",
    "rrq_empty_name": b"\x00\x01\x00octet\x00",
    "rrq_mail_mode": b"\x00\x01small.bin\x00mail\x00",
    "rrq_nul_in_name": b"\x00\x01small\x00.bin\x00octet\x00",
    "directory": rrq(b"sub"),
    "root_dot": rrq(b"."),
    "missing": rrq(b"nope.bin"),
    "data_op": b"\x00\x03\x00\x01abc",
    "ack_op": b"\x00\x04\x00\x01",
    "error_op": b"\x00\x05\x00\x01x\x00",
    "oack_op": b"\x00\x06blksize\x00512\x00",
    "op_99": b"\x00\x63whatever",
    "high_byte_op": b"\xff\x01abc",
    "random": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_error_or_silence(tftp: TftpServer, tftp_root: Path, data: bytes) -> None:
    c = Raw(tftp.bound_port)
    try:
        c.send(data)
        got = c.recv(0.2)
        if got is not None:
            assert got[0][:2] == b"\x00\x05", got  # an error, never data
            assert got[0][2:4] in (b"\x00\x01", b"\x00\x02", b"\x00\x04")
    finally:
        c.close()
    assert_served(tftp.bound_port, tftp_root)


@pytest.mark.parametrize("opts", [(), (b"blksize", b"1024")], ids=["plain", "with_oack"])
def test_no_ack_bounded_retransmits(tftp: TftpServer, opts: tuple[bytes, ...]) -> None:
    c = Raw(tftp.bound_port)
    try:
        c.send(rrq(b"big.bin", *opts))
        packets = 0
        deadline = time.monotonic() + tftp.timeout * (tftp.retries + 3)
        while time.monotonic() < deadline:
            if c.recv(0.1) is not None:
                packets += 1
        assert 1 <= packets <= 1 + tftp.retries
        assert tftp.sessions == {}
        assert tftp.stats.aborted == 1
    finally:
        c.close()


def test_stray_packets_do_not_hold_a_session(tftp: TftpServer) -> None:
    """A client that keeps sending stale ACKs still gets at most 1 + retries copies of a block,
    and the session is reaped."""
    c = Raw(tftp.bound_port)
    try:
        c.send(rrq(b"big.bin"))
        got = c.recv()
        assert got is not None and got[0][:4] == b"\x00\x03\x00\x01"
        peer, packets = got[1], 1
        deadline = time.monotonic() + tftp.timeout * (2 * tftp.retries + 4)
        while time.monotonic() < deadline:
            c.send(b"\x00\x04\x00\x00", peer)  # ACK 0: stale, every 0.1 s
            if c.recv(0.1) is not None:
                packets += 1
        assert packets <= 1 + tftp.retries
        eventually(lambda: tftp.sessions == {})
        assert tftp.stats.aborted == 1
    finally:
        c.close()


def test_stop_ends_running_transfers(loop: LoopThread, tftp: TftpServer, sink: ListSink) -> None:
    c = Raw(tftp.bound_port)
    try:
        c.send(rrq(b"big.bin"))
        assert c.recv() is not None
        session = next(iter(tftp.sessions.values()))
        loop.run(tftp.stop())
        assert tftp.sessions == {}
        assert session.thread is None or not session.thread.is_alive()
        assert session.sock.fileno() == -1
        aborted = [e for e in sink.events if e.kind is TimelineKind.TFTP_ABORTED]
        assert [e.detail["reason"] for e in aborted] == ["server stopping"]
    finally:
        c.close()


def test_sessions_capped_and_reaped(loop: LoopThread, tftp_root: Path, sink: ListSink) -> None:
    srv = TftpServer(
        tftp_root,
        address="127.0.0.1",
        port=free_port(),
        sink=sink,
        timeout=1.0,  # silent sessions are reaped after 2 s
        retries=1,
        max_sessions=1000,
        client_max_sessions=0,  # the server-wide cap is under test here, not the per-client one
        client_rate=0,
    )
    loop.run(srv.start())
    socks = []
    try:
        for _ in range(2000):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.sendto(rrq(b"small.bin"), ("127.0.0.1", srv.bound_port))
            socks.append(s)
        eventually(lambda: srv.stats.requests >= 2000, timeout=10)
        # The cap bounds transfers in flight at once: on a slow machine a few slots may free up
        # (reaped) while the 2,000 requests still arrive, and serve later requests.
        assert srv.stats.peak_sessions == 1000 and len(srv.sessions) <= 1000
        assert srv.stats.started + srv.stats.by_error.get(0, 0) == 2000  # the rest: "busy"
        assert srv.stats.by_error.get(0, 0) >= 2000 - 1000 - srv.stats.aborted
        eventually(lambda: srv.sessions == {}, timeout=15)
        assert srv.stats.aborted == srv.stats.started
        assert_served(srv.bound_port, tftp_root)
    finally:
        for s in socks:
            s.close()
        loop.run(srv.stop())


def test_client_error_aborts_and_timeline(tftp: TftpServer, sink: ListSink) -> None:
    c = Raw(tftp.bound_port)
    try:
        c.send(rrq(b"big.bin"))
        got = c.recv()
        assert got is not None
        c.send(b"\x00\x05\x00\x00cancel\x00", got[1])
        eventually(lambda: tftp.sessions == {})
    finally:
        c.close()
    kinds = [e.kind for e in sink.events]
    assert kinds[:2] == [TimelineKind.TFTP_START, TimelineKind.TFTP_ABORTED]


def test_refuses_wildcard(tftp_root: Path) -> None:
    from pxe.errors import PxeError

    with pytest.raises(PxeError):
        TftpServer(tftp_root, address="0.0.0.0")  # noqa: S104


def test_one_address_cannot_take_every_slot(
    loop: LoopThread, tftp_root: Path, sink: ListSink
) -> None:
    """Issue 10.11: one address held every session and everyone else got "busy". It now holds
    at most its per-client share, its excess requests are dropped unanswered, and a client from
    another address (127.0.0.2) is served during the flood."""
    srv = TftpServer(
        tftp_root,
        address="127.0.0.1",
        port=free_port(),
        sink=sink,
        timeout=30.0,  # the flood's sessions stay for the whole test
        retries=1,
        max_sessions=20,
        client_max_sessions=4,
        client_rate=5.0,
        client_burst=10,
    )
    loop.run(srv.start())
    socks = []
    try:
        for _ in range(200):  # never acknowledged: each would hold a slot
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.sendto(rrq(b"small.bin"), ("127.0.0.1", srv.bound_port))
            socks.append(s)
        eventually(lambda: srv.stats.requests >= 200, timeout=10)
        assert srv.limits.sessions("127.0.0.1") == 4 == len(srv.sessions)
        assert srv.stats.rate_limited > 0 and srv.stats.client_busy > 0
        assert srv.stats.by_error.get(0, 0) == srv.stats.client_busy  # no "server busy" at all
        for _ in range(3):  # the flood goes on while another address fetches
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.sendto(rrq(b"small.bin"), ("127.0.0.1", srv.bound_port))
            socks.append(s)
        c = Raw(srv.bound_port)
        c.sock.close()
        c.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sock.bind(("127.0.0.2", 0))
        try:
            c.send(rrq(b"small.bin"))
            got = c.recv(timeout=5.0)
            assert got is not None and got[0][:2] == b"\x00\x03", got  # DATA, not an error
            data, peer = got
            body = data[4:]
            while len(data) - 4 == 512:
                c.send(b"\x00\x04" + data[2:4], peer)
                nxt = c.recv(timeout=5.0)
                assert nxt is not None
                data, peer = nxt
                body += data[4:]
            c.send(b"\x00\x04" + data[2:4], peer)
        finally:
            c.close()
        assert body == (tftp_root / "small.bin").read_bytes()
        assert srv.limits.sessions("127.0.0.1") == 4
    finally:
        for s in socks:
            s.close()
        loop.run(srv.stop())
