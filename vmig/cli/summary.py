"""``vmig info STREAM [--json] [--xml] [--snapshot NAME|ID]``: what an input is and what its stream
carries.

The container (a libvirt save image's header fields and domain name; a qcow2 image's snapshot list
as ``qemu-img snapshot -l`` prints it; the compression), then the stream: machine type, sections,
devices, RAM totals (:mod:`vmig.analysis.summary`). ``--xml`` prints a libvirt save image's domain
XML. A qcow2 image with several snapshots and no ``--snapshot`` gets its snapshot list only.
"""

from __future__ import annotations

import argparse
import json
import sys

from vmig.cli._common import add_desc_from_argument, add_stream_argument
from vmig.errors import UsageError


class TopicOrStream(argparse._SubParsersAction):
    """``vmig info``'s topics, where anything that is not a topic name is the STREAM of the
    ``summary`` topic."""

    class _AnyName(dict):
        def __contains__(self, key: object) -> bool:
            return True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.choices = self._AnyName()  # type: ignore[assignment]  (checked in __call__)

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        if values and values[0] not in self._name_parser_map:
            values = ["summary", *values]
        super().__call__(parser, namespace, values, option_string)


def register_summary(topics: argparse._SubParsersAction) -> None:
    """Add the ``summary`` topic (also reached as ``vmig info STREAM``)."""
    s = topics.add_parser("summary", help="the container and the stream in one screen (default topic)")
    add_stream_argument(s, early_map=False)
    s.add_argument("--json", action="store_true", help="print a JSON document")
    s.add_argument("--xml", action="store_true", help="print the domain XML of a libvirt save image")
    add_desc_from_argument(s)
    s.set_defaults(handler=handle_summary)


def handle_summary(args: argparse.Namespace) -> int:
    from vmig.analysis.summary import Summary, container_text, render_text
    from vmig.io.containers import inspect
    from vmig.io.streams import iter_events

    path = args.stream
    snapshot = getattr(path, "snapshot", None)
    outer = inspect(path) if path != "-" else []
    if args.xml:
        xml = next((layer.xml for layer in outer if layer.kind == "libvirt"), None)
        if xml is None:
            raise UsageError(f"{path}: --xml needs a libvirt save image; this input is "
                             f"{'a ' + outer[0].kind + ' container' if outer else 'not one'}")
        sys.stdout.write(xml if xml.endswith("\n") else xml + "\n")
        return 0
    if outer and outer[0].kind == "qcow2" and snapshot is None and len(outer[0].info["snapshots"]) != 1:
        doc = {"containers": [layer.to_json() for layer in outer], "stream": None}
        if args.json:
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        else:
            sys.stdout.write("\n".join(container_text(doc["containers"])) + "\n")
            if outer[0].info["snapshots"]:
                sys.stdout.write("(choose a snapshot with --snapshot NAME|ID to summarise its VM state)\n")
        return 0
    summary = Summary()
    found: list = []
    for ev in iter_events(path, desc_from=args.desc_from, schema_sets=True, on_open=found.append):
        summary.feed(ev)
    doc = summary.to_json(found[0].layers if found else [])
    sys.stdout.write(json.dumps(doc, indent=2) + "\n" if args.json else render_text(doc))
    return 0
