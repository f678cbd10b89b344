"""Vocabulary and values: enums documented, secrets unprintable, errors templated."""

from __future__ import annotations

import inspect
import pickle

import pytest

from bmc import (
    BmcAuthError,
    BmcEndpoint,
    BmcError,
    BmcFatalError,
    BmcTimeoutError,
    BmcTransientError,
    BootDevice,
    DriverKind,
    PowerAction,
    PowerState,
    Secret,
)
from bmc import errors as errors_mod


@pytest.mark.parametrize("enum", [PowerState, PowerAction, BootDevice, DriverKind])
def test_every_member_has_a_docstring(enum: type) -> None:
    source = inspect.getsource(enum)
    for member in enum:  # type: ignore[attr-defined]
        line = f'{member.name} = "{member.value}"'
        after = source.split(line, 1)[1].lstrip()
        assert after.startswith('"""'), member


def test_action_targets() -> None:
    assert {a: a.target for a in PowerAction} == {
        PowerAction.on: PowerState.on,
        PowerAction.off: PowerState.off,
        PowerAction.soft_off: PowerState.off,
        PowerAction.cycle: PowerState.on,
        PowerAction.reset: PowerState.on,
    }


def test_secret_never_prints() -> None:
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) + str(s) + f"{s}" + f"{s!r}" + "%s" % s  # noqa: UP031
    assert s.get_secret_value() == "hunter2"
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(AttributeError):
        s._value = "x"  # type: ignore[misc]


def test_endpoint_repr_hides_password_and_accepts_pydantic_secret() -> None:
    from pydantic import SecretStr

    ep = BmcEndpoint(
        DriverKind.redfish,
        "10.0.0.5",
        8443,
        "admin",
        SecretStr("hunter2"),
        ca_bundle="-----BEGIN CERTIFICATE-----",
    )
    assert isinstance(ep.password, Secret)
    assert ep.password.get_secret_value() == "hunter2"
    for text in (repr(ep), str(ep), f"{ep}"):
        assert "hunter2" not in text
    assert ep.key == "10.0.0.5:8443"
    assert BmcEndpoint(DriverKind.ipmi, "fd00::1").key == "[fd00::1]:623"
    assert BmcEndpoint(DriverKind.redfish, "10.0.0.5").key == "10.0.0.5:443"
    assert BmcEndpoint(DriverKind.redfish, "10.0.0.5", scheme="http").key == "10.0.0.5:80"
    with pytest.raises(Exception):  # noqa: B017 - frozen
        ep.address = "x"  # type: ignore[misc]


def test_errors_are_templates_with_fields_and_say_whether_to_retry() -> None:
    e = BmcAuthError(bmc="10.0.0.5:623", user="admin", detail="RAKP 2")
    assert str(e) == "BMC 10.0.0.5:623 rejected the credentials of user 'admin': RAKP 2"
    assert e.fields["user"] == "admin" and isinstance(e, BmcFatalError) and not e.retryable
    t = BmcTimeoutError(bmc="x", seconds=1.5, detail="d")
    assert isinstance(t, BmcTransientError) and t.retryable and t.http_status == 504
    for name in dir(errors_mod):
        cls = getattr(errors_mod, name)
        if isinstance(cls, type) and issubclass(cls, BmcError) and cls is not BmcError:
            assert issubclass(cls, (BmcFatalError, BmcTransientError)), name


def test_scrub() -> None:
    assert errors_mod.scrub("a hunter2 b", "hunter2", None, "") == "a *** b"
