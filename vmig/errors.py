"""The one error hierarchy of vmig.

Library code raises these with the data a caller needs; the CLI turns any ``VmigError`` into a
single line on stderr and exit code 2. Anything else escaping is a bug.

    VmigError
    ├── UsageError            the caller misused the API or the command line
    ├── StreamError           the input stream is wrong (offset, section, path, expected/found)
    │   ├── TruncatedError    the input ended inside a record
    │   ├── BadMagicError     not a QEVM stream / unsupported version
    │   ├── FooterMismatchError
    │   ├── RamError          a RAM record is invalid
    │   └── SchemaError       no description/schema can walk a section, or the payload does not fit it
    ├── DeviceError           the device model refused an operation (QEMU's realize/qom-set errors)
    └── MigrationError        a load failed the way QEMU's loader would fail (QEMU's message)
"""

from __future__ import annotations

from typing import Any


def printable(text: str, keep: str = "") -> str:
    """``text`` with every character that is not printable (but those in ``keep``) escaped as
    Python writes it in a string literal (``\\t``, ``\\x1b``, ``\\u2028``): what a message
    or a listing shows of bytes the input chose (an idstr, a JSON string, a file name) stays on
    its line and never drives the terminal."""
    rest = text
    for c in keep:
        rest = rest.replace(c, "")
    if rest.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


class VmigError(Exception):
    """Base of every error vmig raises on purpose."""

    def one_line(self) -> str:
        """The message as one line of printable characters (line breaks become spaces)."""
        return printable(" ".join(str(self).split("\n")))


class UsageError(VmigError):
    """The caller used the API or CLI wrongly (not the stream's fault)."""


class StreamError(VmigError):
    """The stream is malformed, truncated or hostile.

    Attributes:
        message: what is wrong, in words.
        offset: absolute byte offset in the input where the problem was found.
        section: ``"idstr instance N"`` of the enclosing section, if any.
        path: the input's name (set by the I/O layer or the CLI via ``with_path``).
        expected / found: what the decoder expected and what it read, if meaningful.
    """

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        section: str | None = None,
        path: str | None = None,
        expected: Any = None,
        found: Any = None,
    ) -> None:
        self.message = message
        self.offset = offset
        self.section = section
        self.path = path
        self.expected = expected
        self.found = found
        super().__init__(message)

    def with_path(self, path: str) -> StreamError:
        if self.path is None:
            self.path = path
        return self

    def with_section(self, section: str) -> StreamError:
        if self.section is None:
            self.section = section
        return self

    def with_offset(self, offset: int) -> StreamError:
        if self.offset is None:
            self.offset = offset
        return self

    def __str__(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(str(self.path))
        if self.offset is not None:
            parts.append(f"offset {self.offset:#x} ({self.offset})")
        if self.section is not None:
            parts.append(f"section {self.section}")
        text = self.message
        if self.expected is not None or self.found is not None:
            text += f" (expected {self.expected}, found {self.found})"
        parts.append(text)
        return ": ".join(parts)


class TruncatedError(StreamError):
    """The input ended in the middle of a record."""


class BadMagicError(StreamError):
    """Wrong magic or unsupported stream version."""


class FooterMismatchError(StreamError):
    """A section footer names another section id than the section it closes."""


class RamError(StreamError):
    """An invalid RAM record (unknown flags, unknown block, address beyond the block…)."""


class SchemaError(StreamError):
    """No description covers a section, or its payload does not match the description."""


class DeviceError(VmigError):
    """The device model refused an operation, with QEMU's message for the same case."""


class MigrationError(VmigError):
    """Loading a stream failed as QEMU's destination would fail (QEMU's message text)."""
