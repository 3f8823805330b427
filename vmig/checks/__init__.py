"""Stream checkers for ``vmig check`` (registered explicitly via ``vmig.cli.check.CHECKER_MODULES``).

* :mod:`.virtio_mem`  virtio-mem state consistency and destination load prediction.
"""
