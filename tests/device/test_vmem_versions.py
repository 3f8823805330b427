"""Version / machine-type dependent behaviour (spec tags [5.1] … [10.0], [master])."""

from __future__ import annotations

import pytest

from vmig.device.versions import Behaviour
from vmig.errors import UsageError


@pytest.mark.parametrize(
    "qemu,machine,rounds,busy_only_plugged,early,suspend,vectors,queue",
    [
        ("5.1", "pc", False, False, False, False, 0, 128),
        ("7.2", "pc", True, False, False, False, 0, 128),
        ("8.0", "pc", True, False, True, False, 0, 128),
        ("8.0", "pc-i440fx-7.2", True, False, False, False, 0, 128),
        ("8.2", "q35", True, True, True, False, 0, 128),
        ("9.2", "pc", True, True, True, True, 0, 128),
        ("10.0", "pc", True, True, True, True, 2, 1024),
        ("10.0", "pc-i440fx-9.2", True, True, True, True, 0, 1024),
        ("10.0", "pc-i440fx-7.2", True, True, False, True, 0, 1024),
    ],
)
def test_behaviour_table(qemu, machine, rounds, busy_only_plugged, early, suspend, vectors, queue):
    b = Behaviour.for_qemu(qemu, machine)
    assert b.rounds_usable_region is rounds
    assert b.unplug_all_busy_only_if_plugged is busy_only_plugged
    assert b.early_migration_default is early
    assert b.persistent_suspend is suspend
    assert b.msix_vectors_default == vectors
    assert b.queue_size == queue


def test_unplugged_inaccessible_defaults():
    assert Behaviour.for_qemu("6.1").unplugged_inaccessible_default == "off"  # no property
    assert not Behaviour.for_qemu("6.1").has_unplugged_inaccessible
    assert Behaviour.for_qemu("7.2").unplugged_inaccessible_default == "auto"
    assert Behaviour.for_qemu("7.2", "pc-i440fx-6.2").unplugged_inaccessible_default == "off"
    assert Behaviour.for_qemu("8.1").unplugged_inaccessible_default == "on"
    assert Behaviour.for_qemu("8.1", "pc-q35-8.0").unplugged_inaccessible_default == "auto"


def test_bad_versions():
    with pytest.raises(UsageError):
        Behaviour.for_qemu("5.0")
    with pytest.raises(UsageError):
        Behaviour.for_qemu("7.2", "pc-i440fx-8.0")  # machine newer than the binary
    with pytest.raises(UsageError):
        Behaviour.for_qemu("7.2", "virt")
    assert Behaviour.for_qemu("7.2.22").qemu == (7, 2)
