"""Migration status as the device layer sees it: QEMU's outgoing MigrationStatus, the incoming
PostcopyState and the INMIGRATE runstate, shared by all devices of a machine.

Mirrors migration/migration.c (``migration_is_idle``, ``migration_in_incoming_postcopy``) as used
by hw/virtio/virtio-mem.c ``virtio_mem_is_busy``. Driven by whoever plays the migration engine
(a test, the scenario runner, :mod:`vmig.migration`).
"""

from __future__ import annotations

from vmig.errors import UsageError

__all__ = ["MigrationState"]


class MigrationState:
    """QEMU's global migration state as virtio-mem sees it (``virtio_mem_is_busy``).

    ``outgoing`` takes QEMU's MigrationStatus names (``none``, ``setup``, ``active``,
    ``pre-switchover``, ``device``, ``postcopy-active``, ``completed``, ``failed``, ``cancelled`` …);
    ``incoming_postcopy`` the PostcopyState names (``none``, ``advise``, ``discard``, ``listening``,
    ``running``, ``end``). ``inmigrate`` is the INMIGRATE runstate (``-incoming``).
    """

    OUTGOING_IDLE = frozenset({"none", "cancelled", "completed", "failed"})
    OUTGOING_STATES = frozenset(
        {
            "none", "setup", "cancelling", "cancelled", "active", "postcopy-active",
            "postcopy-paused", "postcopy-recover-setup", "postcopy-recover", "completed",
            "failed", "colo", "pre-switchover", "device", "wait-unplug",
        }
    )
    POSTCOPY_ORDER = ("none", "advise", "discard", "listening", "running", "end")

    def __init__(self) -> None:
        self.outgoing: str = "none"
        self.incoming_postcopy: str = "none"
        self.inmigrate: bool = False

    def set_outgoing(self, status: str) -> None:
        """Set the outgoing migration status (as ``query-migrate`` would report it)."""
        if status not in self.OUTGOING_STATES:
            raise UsageError(f"unknown migration status {status!r}")
        self.outgoing = status

    def set_incoming_postcopy(self, state: str) -> None:
        """Set the incoming postcopy state (POSTCOPY_INCOMING_*, lower case)."""
        if state not in self.POSTCOPY_ORDER:
            raise UsageError(f"unknown postcopy state {state!r}")
        self.incoming_postcopy = state

    @property
    def in_incoming_postcopy(self) -> bool:
        """``migration_in_incoming_postcopy()``: DISCARD ≤ state < END."""
        i = self.POSTCOPY_ORDER.index(self.incoming_postcopy)
        return 2 <= i < 5

    @property
    def postcopy_advised(self) -> bool:
        i = self.POSTCOPY_ORDER.index(self.incoming_postcopy)
        return 1 <= i < 5

    @property
    def outgoing_running(self) -> bool:
        return self.outgoing not in self.OUTGOING_IDLE

    @property
    def busy(self) -> bool:
        """True while virtio-mem must refuse plug/unplug (spec §3.2)."""
        return self.in_incoming_postcopy or self.outgoing_running
