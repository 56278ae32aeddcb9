"""A ZIP held in memory whose members are inflated by streaming reads under running byte caps.

Header sizes are never trusted: the caps of :class:`ZipLimits` are checked on what actually inflates, chunk by
chunk. Member names that are absolute or climb out with ``..`` and encrypted members are refused. Every problem
is a :class:`PackageError` whose message gives the reason; nothing is extracted to disk.
"""

from __future__ import annotations

import csv
import io
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from xml.etree.ElementTree import ParseError

MIB = 1 << 20
_CHUNK = MIB
# What zipfile, zlib, expat and csv raise on hostile bytes; all of it becomes a PackageError.
CORRUPTION = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    LookupError,
    OverflowError,
    struct.error,
    ParseError,
    csv.Error,
    AssertionError,
)


class PackageError(ValueError):
    """A package that cannot be read; the message is the reason (naming the member when there is one)."""


@dataclass(frozen=True)
class ZipLimits:
    """What one package may inflate to. Crossing any cap is treated as a zip bomb."""

    max_package_bytes: int = 512 * MIB  # the compressed package itself
    max_members: int = 2_000  # real packages hold a few dozen
    max_member_bytes: int = 128 * MIB  # one inflated member
    max_total_bytes: int = 512 * MIB  # all inflated members read
    max_ratio: float = 500.0  # inflated / compressed: real XBRL stays far below; deflate tops out near 1030
    ratio_floor_bytes: int = MIB  # small members may compress extremely well without being bombs


def _mib(n: int) -> str:
    return f"{n / MIB:g} MiB"


def _not_a_zip(data: bytes) -> str:
    head = data.lstrip()[:1]
    if not data:
        return "not a zip archive: empty"
    if head in (b"{", b"["):
        return "not a zip archive: a JSON body (an EDINET API error saved as a package?)"
    if data.startswith(b"%PDF"):
        return "not a zip archive: a PDF"
    return f"not a zip archive: starts with {data[:8]!r}"


def _check_name(info: zipfile.ZipInfo) -> None:
    for name in (info.orig_filename, info.filename):
        parts = re.split(r"[\\/]", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise PackageError(f"zip-slip: member name {name!r} is absolute or climbs out with '..'")


class Archive:
    """A ZIP held in memory whose members are only ever inflated through the caps of ``limits``."""

    def __init__(self, data: bytes, limits: ZipLimits):
        self.limits = limits
        self.inflated = 0
        if len(data) > limits.max_package_bytes:
            raise PackageError(
                f"package too large: {len(data)} bytes (limit {_mib(limits.max_package_bytes)})"
            )
        if not data.startswith(b"PK"):
            raise PackageError(_not_a_zip(data))
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            self.members = self.zip.infolist()
        except zipfile.BadZipFile as exc:
            reason = "no end-of-central-directory record" if "not a zip file" in str(exc) else exc
            raise PackageError(f"truncated or corrupt zip: {reason}") from exc
        except CORRUPTION as exc:
            raise PackageError(f"corrupt zip: {type(exc).__name__}: {exc}") from exc
        if len(self.members) > limits.max_members:
            raise PackageError(f"zip bomb: {len(self.members)} members (limit {limits.max_members})")
        for info in self.members:
            _check_name(info)
            if info.flag_bits & 0x41:  # 0x1 encrypted, 0x40 strong encryption
                raise PackageError(f"encrypted member {info.filename!r}")

    def read(self, info: zipfile.ZipInfo) -> bytes:
        """The member's bytes; the caps are checked on what actually inflates, chunk by chunk."""
        lim, name = self.limits, info.filename
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise PackageError(f"unsupported compression method {info.compress_type} for member {name!r}")
        ratio_cap = lim.max_ratio * max(info.compress_size, 1)
        buf = bytearray()
        try:
            with self.zip.open(info) as fh:
                while chunk := fh.read(_CHUNK):
                    buf += chunk
                    if len(buf) > lim.max_member_bytes:
                        raise PackageError(
                            f"zip bomb: member {name!r} inflates past {_mib(lim.max_member_bytes)}"
                        )
                    if self.inflated + len(buf) > lim.max_total_bytes:
                        raise PackageError(
                            f"zip bomb: members inflate past {_mib(lim.max_total_bytes)} in total"
                        )
                    if len(buf) > max(lim.ratio_floor_bytes, ratio_cap):
                        raise PackageError(
                            f"zip bomb: member {name!r} has a compression ratio over {lim.max_ratio:g}:1"
                        )
        except PackageError:
            raise
        except CORRUPTION as exc:
            raise PackageError(f"corrupt zip member {name!r}: {exc}") from exc
        self.inflated += len(buf)
        return bytes(buf)
