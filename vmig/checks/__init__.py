"""Stream checkers for ``vmig check``, listed in :data:`vmig.checks.registry.CHECKERS`.

* :mod:`.virtio_mem`   virtio-mem state consistency and ``--dest`` load prediction;
* :mod:`.destination`  ``--dest-capture``: QEMU's first load failure on a captured destination;
* :mod:`.registry`     the checker table and :func:`~vmig.checks.registry.run_checks`.
"""
