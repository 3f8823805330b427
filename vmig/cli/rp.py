"""``vmig rp FILE``: the messages of a postcopy return path (destination -> source), decoded.

One row per message (offset, length, type, decoded values), then a summary: the PONG values in
the order they arrived, page requests per RAMBlock (messages and bytes) and the SHUT status.
``--json`` prints ``{"messages": [...], "summary": {...}}``. A whole return path ends with SHUT;
``--partial`` accepts one cut at a message boundary. The wire format is spec
stream-format.md §6.2 (QEMU's migration/migration.c ``source_return_path_thread``); decoding is
:mod:`vmig.stream.return_path`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vmig.cli._common import add_stream_argument
from vmig.io.streams import open_source
from vmig.runs import true_runs
from vmig.stream.constants import RpMsg
from vmig.stream.return_path import RpMessage, iter_rp

__all__ = ["register", "handler", "message_json", "summarize", "format_row"]


HELP = """\
List the messages a postcopy destination sent back to its source (the return path): one row
per message (offset, length, type and values: PONG value, page requests with block, start and
length, received-bitmap counts, SHUT status), then the PONGs in order, the page requests per RAM
block and the final status. Match PONG values with the PING values vmig sections prints for the
stream. --json prints {"messages": [...], "summary": {...}}. A complete return path ends with
SHUT; --partial accepts one cut short.

Example:
  vmig rp return-path.bin
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rp", help="decode a postcopy return-path capture", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_argument(p, "file", help="return-path capture ('-' = stdin; *.lz4 is decompressed)",
                        early_map=False)
    p.add_argument("--json", action="store_true", help="print JSON {messages, summary}")
    p.add_argument("--partial", action="store_true",
                   help="accept a capture that stops at a message boundary before SHUT")
    p.set_defaults(handler=handler)


def message_json(m: RpMessage) -> dict:
    """A JSON-ready dict of one message (a RECV_BITMAP's bitmap as runs of received pages)."""
    args = {k: v for k, v in m.args.items() if k != "bitmap"}
    if m.type == RpMsg.RECV_BITMAP:
        bits = m.args["bitmap"]
        args["received"] = int(np.count_nonzero(bits))
        args["received_runs"] = [[s, e - s] for s, e in true_runs(bits)]  # [first, count]
    return {"offset": m.offset, "length": m.length, "type": m.type.name, "args": args}


def summarize(messages: list[RpMessage]) -> dict:
    """PONGs in order, page requests per RAMBlock ({block: {requests, bytes}}), SHUT status
    (None when the capture has no SHUT)."""
    pongs = [m.args["value"] for m in messages if m.type == RpMsg.PONG]
    reqs: dict[str, dict[str, int]] = {}
    for m in messages:
        if m.type in (RpMsg.REQ_PAGES, RpMsg.REQ_PAGES_ID):
            r = reqs.setdefault(m.args["idstr"], {"requests": 0, "bytes": 0})
            r["requests"] += 1
            r["bytes"] += m.args["len"]
    shut = [m.args["status"] for m in messages if m.type == RpMsg.SHUT]
    return {
        "messages": len(messages),
        "pongs": pongs,
        "page_requests": reqs,
        "page_requests_total": sum(r["requests"] for r in reqs.values()),
        "shutdown_status": shut[-1] if shut else None,
    }


def format_row(m: RpMessage) -> str:
    """One text line for a message."""
    a = message_json(m)["args"]
    parts = []
    for k, v in a.items():
        if k == "received_runs":
            continue
        if k == "start":
            v = f"{v:#x}"
        parts.append(f"{k}={v}")
    return f"{m.offset:#010x}  {m.length:>8}  {m.type.name:<14}  {' '.join(parts)}".rstrip()


def handler(args: argparse.Namespace) -> int:
    with open_source(args.file, use_mmap=False) as src:
        # Collected first so a decode error leaves no half-written output.
        events = iter_rp(src.chunks(), path=src.name, require_shut=not args.partial)
        msgs = [e for e in events if isinstance(e, RpMessage)]
    summary = summarize(msgs)
    out = sys.stdout
    if args.json:
        json.dump({"messages": [message_json(m) for m in msgs], "summary": summary}, out, indent=1)
        out.write("\n")
        return 0
    out.write(f"{'offset':>10}  {'length':>8}  {'type':<14}  values\n")
    for m in msgs:
        out.write(format_row(m) + "\n")
    out.write(f"pongs: {', '.join(str(v) for v in summary['pongs']) or '-'}\n")
    out.write(f"page requests: {summary['page_requests_total']}\n")
    for blk, r in summary["page_requests"].items():
        out.write(f"  {blk}: {r['requests']} requests, {r['bytes']} bytes\n")
    st = summary["shutdown_status"]
    out.write(f"shutdown: {'none (no SHUT message)' if st is None else st}\n")
    return 0
