"""The server side of the boot plane (``pxe/`` is the protocol side and knows no database).

* :mod:`server.boot.decide`   pure decisions: phase -> script action, DHCP answer, profile choice
* :mod:`server.boot.profiles` stored profiles <-> ``pxe.ipxe.BootProfile`` (validation, assets)
* :mod:`server.boot.assets`   boot assets on disk: upload with sha256, names, HTTP ranges
* :mod:`server.boot.timeline` the netboot timeline: queue + background writer, retention, reads
* :mod:`server.boot.service`  ``BootPlane``: the database-backed ``BootBackend``, script rendering,
  discovery (rate-limited), and the in-process ``PxeService`` of ``bronze serve``
* :mod:`server.boot.remote`   ``bronze pxe --server``: the timeline sink that posts to the server
"""
