"""``vmig check --dest-capture OTHER``: would the stream load into the VM that wrote OTHER?

OTHER is any capture of the destination's configuration (same command line as the destination
QEMU). Its machine type, RAMBlocks and savevm sections configure a
:class:`vmig.migration.destination.Destination`, which then loads the checked stream with QEMU's
checks in QEMU's order: the machine type (CONFIGURATION), the RAM block list (unknown block, size
mismatch), then every section the destination lacks. The first failure is reported with QEMU's
own lines (checked against QEMU 7.2), joined by `` / `` on one line; QEMU stops there, so does this
checker. RAM contents are not held (``keep_ram=False``).
"""

from __future__ import annotations

from typing import Any

from vmig.errors import MigrationError

__all__ = ["DestinationChecker", "checker_factory"]


class DestinationChecker:
    def __init__(self, capture: str) -> None:
        from vmig.migration.destination import Destination
        from vmig.stream.io import iter_events

        self.capture = capture
        self.dest = Destination.like(iter_events(capture, schema_sets=True), keep_ram=False)
        self.failed = False

    def __call__(self, event: Any) -> list[str] | None:
        if self.failed:
            return None
        try:
            self.dest.feed(event)
        except MigrationError as e:
            self.failed = True
            return [f"destination like {self.capture} would fail to load: " + " / ".join(str(e).splitlines())]
        return None


def checker_factory(ctx: Any) -> Any:
    """Active when ``ctx.notes["dest_capture"]`` names a capture (``--dest-capture``)."""
    capture = (getattr(ctx, "notes", {}) or {}).get("dest_capture")
    if not capture:
        return lambda event: None
    return DestinationChecker(capture)


def _register() -> None:
    from vmig.cli.check import register_checker

    register_checker(checker_factory, "destination")


_register()
