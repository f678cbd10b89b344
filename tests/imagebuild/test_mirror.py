"""The Debian mirror the build uses is the one apt is configured with."""

from __future__ import annotations

import pytest

from agent.image.debian import DebianError, Mirror, candidates, parse_candidates, parse_sources

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""
SECURITY_FIRST = """Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb-src deb
URIs: http://mirror.example/debian/
Suites: trixie
Components: contrib main
"""


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([("debian.sources", DEB822)], Mirror("http://deb.debian.org/debian", "bookworm")),
        ([("x.sources", SECURITY_FIRST)], Mirror("http://mirror.example/debian", "trixie")),
        (
            [("sources.list", "# c\ndeb-src http://a/debian bookworm main\n"
              "deb [arch=amd64 signed-by=/k.gpg] http://b/debian/ bookworm main contrib\n")],
            Mirror("http://b/debian", "bookworm"),
        ),
        (
            [("sources.list", ""), ("debian.sources", DEB822)],
            Mirror("http://deb.debian.org/debian", "bookworm"),
        ),
    ],
    ids=["deb822", "skips-security-and-src", "one-line-with-options", "empty-list-then-deb822"],
)  # fmt: skip
def test_parse_sources(files: list[tuple[str, str]], expected: Mirror) -> None:
    assert parse_sources(files) == expected


@pytest.mark.parametrize(
    "files",
    [
        [],
        [("sources.list", "deb http://a/debian bookworm contrib\n")],
        [("d.sources", DEB822.replace("Types: deb\n", "Types: deb\nEnabled: no\n", 1))],
    ],
    ids=["nothing", "no-main", "release-entry-disabled"],
)
def test_no_mirror(files: list[tuple[str, str]]) -> None:
    with pytest.raises(DebianError, match="no Debian mirror configured"):
        parse_sources(files)


POLICY = """fdisk:
  Installed: 2.38.1-5+deb12u3
  Candidate: 2.38.1-5+deb12u3
  Version table:
 *** 2.38.1-5+deb12u3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
libattr1:
  Installed: (none)
  Candidate: 1:2.5.1-4
  Version table:
     1:2.5.1-4 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
gone:
  Installed: (none)
  Candidate: (none)
  Version table:
"""


def test_candidates_of_several_packages_from_one_policy_call() -> None:
    assert parse_candidates(POLICY) == {"fdisk": "2.38.1-5+deb12u3", "libattr1": "1:2.5.1-4"}


def test_candidates_from_the_hosts_apt() -> None:
    found = candidates(("dpkg", "busybox-static"))
    assert set(found) == {"dpkg", "busybox-static"} and all(found.values())
    with pytest.raises(DebianError, match="no candidate for no-such-package-bronze"):
        candidates(("dpkg", "no-such-package-bronze"))
