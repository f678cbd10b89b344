"""The node OS image builder (``bronze images build``; docs/image.md).

One kernel and one initramfs. The initramfs is a whole, small Debian root (python3, busybox,
the bronze agent and its wheels, the NIC/disk modules, the fleet CA) whose ``/init`` brings the
machine up and runs the agent; nothing is mounted from the network, so the same two files serve
a network boot and an installed disk (the installer copies them into a boot slot).

Modules: :mod:`.modules` (which kernel modules, in what order), :mod:`.init_script` (``/init``),
:mod:`.cache` (inputs -> key), :mod:`.cpio` (the archive), :mod:`.debian` (mirror, root,
kernel), :mod:`.build` (the steps). The builder runs on an operator's or CI machine and never
imports ``server/``; uploading goes through the REST API (``server/cli/image_build.py``).
"""
