"""iPXE boot scripts: profiles, label selection, strict validation and rendering.

An iPXE script is a line-oriented shell: a newline starts a command, ``||``/``&&`` chain
commands, ``#`` starts a comment, ``${name}`` expands a setting, spaces split arguments and
quotes group them. Any of those inside a value we render would change what the machine runs, so
every value is validated and refused (`UnsafeValue`) rather than escaped. The only expansions
allowed are the renderer's own: ``${mac}``, ``${uuid}``, ``${server}``, ``${token}``, which it
replaces with validated values before the text leaves this module.

Which profile a machine gets is the server's decision (``server.boot.decide.pick_profile``);
this module only validates and renders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pxe.errors import UnsafeValue

VARIABLES = ("mac", "uuid", "server", "token")
_VAR_RE = re.compile(r"\$\{(" + "|".join(VARIABLES) + r")\}")
_FORBIDDEN = (
    ("\n", "newline"),
    ("\r", "carriage return"),
    (";", "';'"),
    ("&&", "'&&'"),
    ("||", "'||'"),
    ("#", "'#'"),
    ("${", "'${' (only ${mac} ${uuid} ${server} ${token} are allowed)"),
    (" ", "space"),
    ("\t", "tab"),
    ('"', "quote"),
    ("'", "quote"),
    ("`", "backtick"),
    ("$", "'$'"),
    ("\\", "backslash"),
)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{1,512}$")
_SERVER_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BootAction(StrEnum):
    """What the script tells iPXE to do."""

    PROFILE = "profile"
    """Fetch a kernel and initrds over HTTP and boot them."""
    DISK = "disk"
    """Boot from the first local disk."""
    NONE = "none"
    """Do nothing: exit back to the firmware, which tries its next boot device."""


def validate(field_name: str, value: str) -> str:
    """Refuses a value that could change the script's meaning. Returns it unchanged."""
    if not isinstance(value, str) or not value:
        raise UnsafeValue(field_name, str(value), "empty or not a string")
    stripped = _VAR_RE.sub("", value)
    for needle, what in _FORBIDDEN:
        if needle in stripped:
            raise UnsafeValue(field_name, value, f"contains {what}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise UnsafeValue(field_name, value, "contains a control character")
    if any(ord(c) > 0x7E for c in value):
        raise UnsafeValue(field_name, value, "contains a non-ASCII character")
    return value


@dataclass(frozen=True)
class BootProfile:
    """A kernel, its initrds and its arguments; URLs and args may use the allowed variables."""

    name: str
    kernel: str
    initrds: tuple[str, ...] = ()
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise UnsafeValue("name", self.name, "must match [A-Za-z0-9._-]{1,64}")
        validate("kernel", self.kernel)
        for i, url in enumerate(self.initrds):
            validate(f"initrds[{i}]", url)
        for i, arg in enumerate(self.args):
            validate(f"args[{i}]", arg)


@dataclass(frozen=True)
class RenderContext:
    """Values for the allowed variables, validated by shape."""

    mac: str
    server: str
    uuid: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if not _MAC_RE.fullmatch(self.mac):
            raise UnsafeValue("mac", self.mac, "not a lower-case colon MAC")
        if not _SERVER_RE.fullmatch(self.server):
            raise UnsafeValue("server", self.server, "not a plain http(s) base URL")
        if self.uuid is not None and not _UUID_RE.fullmatch(self.uuid):
            raise UnsafeValue("uuid", self.uuid, "not a UUID")
        if self.token is not None and not _TOKEN_RE.fullmatch(self.token):
            raise UnsafeValue("token", self.token, "token characters outside [A-Za-z0-9._~+/=-]")

    def expand(self, field_name: str, value: str) -> str:
        def sub(m: re.Match[str]) -> str:
            v = getattr(self, m.group(1))
            if v is None:
                raise UnsafeValue(field_name, value, f"${{{m.group(1)}}} has no value")
            return str(v)

        return _VAR_RE.sub(sub, validate(field_name, value))


def render(action: BootAction, ctx: RenderContext, profile: BootProfile | None = None) -> str:
    """The iPXE script for one machine. Pure; raises `UnsafeValue` rather than emit bad text."""
    head = "#!ipxe\n"
    if action is BootAction.NONE:
        return head + "echo bronze: nothing to boot\nexit\n"
    if action is BootAction.DISK:
        # `sanboot --no-describe --drive 0x80` boots the first BIOS disk; on UEFI it fails and
        # `exit` hands control back to the firmware's next boot option.
        return head + "sanboot --no-describe --drive 0x80 || exit\n"
    if profile is None:
        raise ValueError("BootAction.PROFILE needs a profile")
    kernel = ctx.expand("kernel", profile.kernel)
    names = [f"initrd{i}" for i in range(len(profile.initrds))]
    args = [ctx.expand(f"args[{i}]", a) for i, a in enumerate(profile.args)]
    args += [f"initrd={n}" for n in names]  # the EFI stub finds initrds by name
    lines = [f"kernel --name kernel {kernel}" + "".join(f" {a}" for a in args)]
    for i, (n, url) in enumerate(zip(names, profile.initrds, strict=True)):
        lines.append(f"initrd --name {n} {ctx.expand(f'initrds[{i}]', url)}")
    lines.append("boot")
    return head + "\n".join(lines) + "\n"
