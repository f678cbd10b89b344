"""The boot plane: DHCP (proxy or full), TFTP and iPXE scripts. Knows nothing of the database.

Public API (what `server` and `bronze pxe` use):
  PxeService, PxeSettings                 - start/stop DHCP + TFTP
  BootBackend, BootQuery, BootDecision    - what pxe asks the control plane
  StaticBackend, HttpBackend              - two backends (CachedBackend wraps one; PxeService does)
  TimelineSink, TimelineEvent, TimelineKind
  BootProfile, BootAction, RenderContext, render   - iPXE scripts
"""

from pxe.backend import (
    BootBackend,
    BootDecision,
    BootQuery,
    CachedBackend,
    HttpBackend,
    ListSink,
    StaticBackend,
    TimelineEvent,
    TimelineKind,
    TimelineSink,
    decision_from_json,
)
from pxe.dhcp.decide import Mode
from pxe.dhcp.packet import Arch
from pxe.errors import BackendError, MalformedPacket, PxeError, UnsafeValue
from pxe.ipxe import BootAction, BootProfile, RenderContext, render
from pxe.service import PxeService, PxeSettings

__all__ = [
    "Arch",
    "BackendError",
    "BootAction",
    "BootBackend",
    "BootDecision",
    "BootProfile",
    "BootQuery",
    "CachedBackend",
    "HttpBackend",
    "ListSink",
    "MalformedPacket",
    "Mode",
    "PxeError",
    "PxeService",
    "PxeSettings",
    "RenderContext",
    "StaticBackend",
    "TimelineEvent",
    "TimelineKind",
    "TimelineSink",
    "UnsafeValue",
    "decision_from_json",
    "render",
]
