"""``bronze lab``: a virtual rack on one host (docs/lab.md).

One network namespace with a bridge, libvirtd + virtlogd inside it, N TCG VMs with real firmware,
a Redfish BMC (sushy-emulator, libvirt driver) per VM and an IPMI BMC (VirtualBMC) for K of them,
and a ``bronze serve`` bound to the bridge address that runs the boot plane and the agent API.

| module | what |
|---|---|
| ``config.py`` | pure: the lab's plan (names, addresses, ports, MACs) and the peers' config texts |
| ``tools.py`` | what the host needs: programs named with their Debian package, the BMC venv |
| ``netns.py`` | reaching into the namespace: child signals, setns threads, the lab's REST API |
| ``state.py`` | the lab's own records (``state.json``), the teardown that reads them, ``status`` |
| ``up.py`` | ``up``: checks, host safety first, then each resource recorded before it exists |
| ``ra.py`` | an IPv6 router advertiser run in the namespace (iPXE waits ~13 s without one) |
"""
