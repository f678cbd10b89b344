"""The ``bronze`` command line (``server.cli.main:app``): one module per command group, shared
options and output in :mod:`server.cli.common`, the REST client in :mod:`server.cli.client`."""
