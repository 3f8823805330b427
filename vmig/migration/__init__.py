"""The offline migration engine: a source and a destination that speak QEMU 7.2's stream.

* :mod:`vmig.migration.ram`: guest RAM with a dirty log and the migration bitmap;
* :mod:`vmig.migration.notifiers`: precopy notifiers, virtio-mem's unplugged-block filter;
* :mod:`vmig.migration.source`: precopy passes, postcopy switchover and page requests, with the
  device sections of a real capture (:class:`StreamTemplate`);
* :mod:`vmig.migration.models`: the sections of modelled devices (virtio-mem), serialized from
  the device model when QEMU saves them;
* :mod:`vmig.migration.vm`: a captured VM migrated in the model (``vmig migrate``);
* :mod:`vmig.migration.scenarios`: model-only timelines (``vmig demo reboot-during-postcopy``);
* :mod:`vmig.migration.destination`: loads a stream with QEMU's checks (RAM block list, page
  addresses, virtio-mem sanity fields), tracks the incoming postcopy state and the pages still
  missing, so a model device there sees "reboot during postcopy" as QEMU's does.

Sans-I/O: sources return bytes, destinations take decoder events.
"""
