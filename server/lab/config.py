"""The lab's plan and its peers' configuration texts: pure functions, no I/O."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
REDFISH_BASE_PORT = 8100
IPMI_BASE_PORT = 6230
API_PORT = 8080
ENROLL_PORT = 7443
SESSION_PORT = 7444
BMC_USER = "admin"


@dataclass(frozen=True)
class Vm:
    name: str
    uuid: str
    mac: str
    redfish_port: int
    ipmi_port: int | None
    disk: str
    console: str
    firmware: str
    """``bios`` (SeaBIOS + the iPXE ROM) or ``uefi`` (OVMF: native PXE, TFTP, then iPXE)."""
    nvram: str
    """OVMF's variable store (UEFI; a Legacy -> UEFI override gets libvirt's own path)."""


@dataclass(frozen=True)
class Plan:
    name: str
    subnet: str
    machines: int
    firmware: str
    ipmi: int
    memory_mib: int
    disk_gib: int
    state_dir: str
    vms: list[Vm] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return self.name

    @property
    def bridge(self) -> str:
        return "br0"

    @property
    def server_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def api_url(self) -> str:
        return f"http://{self.server_ip}:{API_PORT}"

    def pool(self) -> tuple[str, str]:
        hosts = list(ipaddress.ip_network(self.subnet).hosts())
        return str(hosts[99]), str(hosts[149])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        vms = [Vm(**v) for v in data.get("vms", [])]
        return cls(**{**data, "vms": vms})


def mac_for(name: str, index: int) -> str:
    """A stable locally administered MAC per lab and VM (52:54:00 is QEMU's own prefix)."""
    digest = uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.bronze-lab").bytes
    return f"52:54:00:{digest[0]:02x}:{digest[1]:02x}:{index:02x}"


def make_plan(
    *,
    name: str,
    subnet: str,
    machines: int,
    firmware: str,
    ipmi: int,
    memory_mib: int,
    disk_gib: int,
    state_dir: Path,
) -> Plan:
    net = ipaddress.ip_network(subnet, strict=True)
    if not (1 <= machines <= 32):
        raise ValueError("--machines must be 1..32")
    if not (0 <= ipmi <= machines):
        raise ValueError("--ipmi must be 0..--machines")
    if firmware not in ("bios", "uefi", "mixed"):
        raise ValueError("--firmware must be bios, uefi or mixed")
    if net.version != 4 or net.prefixlen > 24 or not net.is_private:
        raise ValueError("--subnet must be a private IPv4 network of /24 or larger")
    vms = []
    for i in range(machines):
        vm = f"{name}-vm{i}"
        vms.append(
            Vm(
                name=vm,
                uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{vm}.bronze-lab")),
                mac=mac_for(name, i),
                redfish_port=REDFISH_BASE_PORT + i,
                ipmi_port=IPMI_BASE_PORT + i if i < ipmi else None,
                disk=str(state_dir / f"{vm}.qcow2"),
                console=str(state_dir / f"{vm}-console.log"),
                firmware=vm_firmware(firmware, i),
                nvram=str(state_dir / f"{vm}_VARS.fd"),
            )
        )
    return Plan(
        name=name,
        subnet=str(net),
        machines=machines,
        firmware=firmware,
        ipmi=ipmi,
        memory_mib=memory_mib,
        disk_gib=disk_gib,
        state_dir=str(state_dir),
        vms=vms,
    )


def vm_firmware(firmware: str, index: int) -> str:
    """``mixed``: even VMs BIOS, odd VMs UEFI."""
    if firmware == "mixed":
        return "uefi" if index % 2 else "bios"
    return firmware


def domain_xml(plan: Plan, vm: Vm) -> str:
    """A TCG domain: virtio disk and NIC on the lab bridge, serial console to a file, disk first
    (the BMC switches the next boot to the network)."""
    # Firmware chosen by hand, the same files sushy-emulator writes for a boot-mode override
    # (`sushy_config`: its defaults are a pathless Legacy loader, which libvirt refuses, and the
    # secure-boot OVMF, which needs SMM); no firmware auto-selection (Debian ships no SeaBIOS
    # descriptor for it).
    if vm.firmware == "uefi":
        loader = (
            f"<loader readonly='yes' secure='no' type='pflash'>{OVMF_CODE}</loader>"
            f"<nvram template='{OVMF_VARS}'>{escape(vm.nvram)}</nvram>"
        )
    else:
        loader = f"<loader readonly='yes' type='rom'>{SEABIOS}</loader>"
    # UEFI: no option ROM on the NIC, so OVMF's own PXE runs (DHCP, TFTP snponly.efi, then
    # iPXE), as on a real UEFI machine; QEMU's default virtio ROM is an EFI iPXE driver that
    # would skip the TFTP step
    rom = "\n      <rom enabled='no'/>" if vm.firmware == "uefi" else ""
    # NOTE: libvirt always starts QEMU with `-boot strict=on`, and a BMC's boot-device override
    # (VirtualBMC's `chassis bootdev pxe`, sushy-emulator's Pxe, both written as the domain's
    # only <boot dev='network'/>) then leaves the disk out of SeaBIOS' boot list: SeaBIOS gives
    # it no BIOS drive number, so iPXE's `sanboot --drive 0x80` (what bronze serves a machine
    # that boots its disk) fails with "Input/output error" and every reboot of an installed
    # machine stops at "No bootable device". A real BMC's PXE override leaves the other boot
    # devices in place: `strict=off` (QEMU merges -boot options, the last wins) does that here.
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(vm.name)}</name>
  <uuid>{vm.uuid}</uuid>
  <memory unit='MiB'>{plan.memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    {loader}
    <boot dev='hd'/>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{escape(vm.disk)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='{plan.bridge}'/>
      <mac address='{vm.mac}'/>
      <model type='virtio'/>{rom}
    </interface>
    <serial type='file'>
      <source path='{escape(vm.console)}'/>
      <target port='0'/>
    </serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  <seclabel type='none'/>
  <qemu:commandline><qemu:arg value='-boot'/><qemu:arg value='strict=off'/></qemu:commandline>
</domain>
"""


def sushy_config(vm: Vm, auth_file: Path, state_dir: Path) -> str:
    """sushy-emulator's config (a Python file): libvirt driver, this VM only, basic auth."""
    return (
        "SUSHY_EMULATOR_LIBVIRT_URI = 'qemu:///system'\n"
        f"SUSHY_EMULATOR_ALLOWED_INSTANCES = [{vm.uuid!r}]\n"
        f"SUSHY_EMULATOR_AUTH_FILE = {str(auth_file)!r}\n"
        f"SUSHY_EMULATOR_STATE_DIR = {str(state_dir)!r}\n"
        "SUSHY_EMULATOR_BOOT_LOADER_MAP = {"
        f"'UEFI': {{'x86_64': {str(OVMF_CODE)!r}}}, 'Legacy': {{'x86_64': {str(SEABIOS)!r}}}}}\n"
        f"SUSHY_EMULATOR_SECURE_BOOT_DISABLED_NVRAM = {str(OVMF_VARS)!r}\n"
    )


def vbmc_daemon_config(config_dir: Path, pid_file: Path, log_file: Path) -> str:
    return (
        "[default]\n"
        f"config_dir = {config_dir}\n"
        f"pid_file = {pid_file}\n"
        "server_port = 50891\n"
        "[log]\n"
        f"logfile = {log_file}\n"
    )


def vbmc_domain_config(vm: Vm, password: str) -> str:
    """VirtualBMC's per-domain file: written directly (0600), so the password is never on the
    argv of ``vbmc add``; ``active = True`` makes vbmcd start it."""
    assert vm.ipmi_port is not None
    return (
        "[VirtualBMC]\n"
        f"username = {BMC_USER}\n"
        f"password = {password}\n"
        "address = 127.0.0.1\n"
        f"port = {vm.ipmi_port}\n"
        f"domain_name = {vm.name}\n"
        "libvirt_uri = qemu:///system\n"
        "active = True\n"
    )
