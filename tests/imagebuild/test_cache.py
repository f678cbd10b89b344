"""Cache keys are a pure function of the build inputs: equal inputs, equal key; any change,
a new key."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import pytest

from agent.image.cache import BuildInputs, cache_key, root_key, wheel_digest

BASE = BuildInputs(
    mirror="http://deb.debian.org/debian",
    suite="bookworm",
    packages=("python3", "busybox-static"),
    kernel_package="linux-image-6.1.0-56-amd64=6.1.192-2",
    modules=("virtio_net", "ext4"),
    wheels=(("bronze", "a" * 64), ("grpcio", "b" * 64)),
    ca_sha256="c" * 64,
    args=("console=ttyS0",),
    compression="zstd",
)

CHANGES = {
    "mirror": "http://mirror.example/debian",
    "suite": "trixie",
    "packages": ("python3",),
    "kernel_package": "linux-image-6.1.0-57-amd64=6.1.193-1",
    "modules": ("virtio_net",),
    "wheels": (("bronze", "d" * 64), ("grpcio", "b" * 64)),
    "ca_sha256": "e" * 64,
    "args": ("console=tty0",),
    "compression": "xz",
    "builder": "a-newer-builder",
}


def test_same_inputs_same_key() -> None:
    assert cache_key(BASE) == cache_key(dataclasses.replace(BASE))
    assert len(cache_key(BASE)) == 64


@pytest.mark.parametrize("field", list(CHANGES), ids=list(CHANGES))
def test_any_change_new_key(field: str) -> None:
    changed = dataclasses.replace(BASE, **{field: CHANGES[field]})
    assert cache_key(changed) != cache_key(BASE)


@pytest.mark.parametrize(
    ("field", "same_base"),
    [("mirror", False), ("suite", False), ("packages", False), ("builder", True),
     ("kernel_package", True), ("wheels", True), ("ca_sha256", True), ("args", True)],
    ids=lambda v: str(v),
)  # fmt: skip
def test_root_key_covers_only_the_debian_root(field: str, same_base: bool) -> None:
    changed = dataclasses.replace(BASE, **{field: CHANGES[field]})

    def key(i: BuildInputs) -> str:
        return root_key(i.mirror, i.suite, i.packages)

    assert (key(changed) == key(BASE)) is same_base


def _wheel(path: Path, members: dict[str, bytes], date: tuple[int, ...]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=date), data)  # type: ignore[arg-type]
    return path


def test_wheel_digest_ignores_zip_timestamps_not_contents(tmp_path: Path) -> None:
    a = _wheel(tmp_path / "a.whl", {"agent/x.py": b"1"}, (2020, 1, 1, 0, 0, 0))
    b = _wheel(tmp_path / "b.whl", {"agent/x.py": b"1"}, (2024, 5, 5, 5, 5, 6))
    c = _wheel(tmp_path / "c.whl", {"agent/x.py": b"2"}, (2020, 1, 1, 0, 0, 0))
    assert wheel_digest(a) == wheel_digest(b) != wheel_digest(c)


def test_bronze_wheel_digest_ignores_what_the_image_leaves_out(tmp_path: Path) -> None:
    """server/ (and the RECORD that hashes it) is not in the image: changing it keeps the key."""
    date = (2020, 1, 1, 0, 0, 0)
    base = {"agent/x.py": b"1", "server/y.py": b"1", "bronze-0.1.dist-info/RECORD": b"r1"}
    a = _wheel(tmp_path / "a.whl", base, date)
    b = _wheel(
        tmp_path / "b.whl",
        {**base, "server/y.py": b"2", "bronze-0.1.dist-info/RECORD": b"r2"},
        date,
    )
    c = _wheel(tmp_path / "c.whl", {**base, "agent/x.py": b"2"}, date)
    skip = ("server", "pxe", "bmc", "migrations")
    assert wheel_digest(a, skip) == wheel_digest(b, skip) != wheel_digest(c, skip)
    assert wheel_digest(a) != wheel_digest(b)  # without skip every member counts
