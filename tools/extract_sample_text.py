"""Re-creates gslice's default evaluation sample (python/gslice/data/sample-text/) from Debian.

The text is the title and Chapters 1-3 of Jane Austen's "Pride and Prejudice" (1813, in the
public domain), as shipped in Debian 12 (bookworm)'s package r-cran-janeaustenr 1.0.0-1,
whose R data object ``prideprejudice`` holds the Project Gutenberg plain text (eBook #1342)
one line per element, without Project Gutenberg's header and licence. Usage::

    apt-get download r-cran-janeaustenr=1.0.0-1
    python tools/extract_sample_text.py r-cran-janeaustenr_1.0.0-1_all.deb python/gslice/data/sample-text/pride-and-prejudice-ch1-3.txt

It checks the package's SHA-256 (as Debian's bookworm index lists it), reads the R lazy-load
database inside it with a minimal reader of R's XDR serialization (character vectors and the
lists of the index; no R needed), and writes the lines before "Chapter 4" joined by newlines.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
DATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
OBJECT = "prideprejudice"
STOP = "Chapter 4"


class _Reader:
    """R's serialization format 2/3, XDR ('X\\n'): just the types the index and data use."""

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError("not an XDR serialization")
        self.b, self.i, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            n = self.int()  # then the native encoding's name
            self.i += n

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.b, self.i)
        self.i += 4
        return v

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # NULL
            return None
        if kind == 255:  # reference to an earlier symbol
            return self.refs[(flags >> 8) - 1]
        if kind == 1:  # symbol
            sym = ("symbol", self.item())
            self.refs.append(sym)
            return sym
        if kind == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.i : self.i + n].decode("utf-8")
            self.i += n
            return s
        if kind == 2:  # pairlist (attributes)
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car, cdr = self.item(), self.item()
            return {"tag": tag, "value": car, "next": cdr, "attr": attr}
        if kind in (16, 19):  # character vector, list
            values = [self.item() for _ in range(self.int())]
            return {"values": values, "attr": self.item() if has_attr else None}
        if kind in (10, 13):  # logical, integer vector
            n = self.int()
            values = list(struct.unpack_from(f">{n}i", self.b, self.i))
            self.i += 4 * n
            return {"values": values, "attr": self.item() if has_attr else None}
        raise ValueError(f"R type {kind} is not needed for this package")


def _names(obj) -> list[str]:
    return obj["attr"]["value"]["values"]  # the 'names' attribute of a list


def _entry(rdb: bytes, offset: int, length: int) -> bytes:
    chunk = rdb[offset : offset + length]
    (size,) = struct.unpack(">i", chunk[:4])
    out = zlib.decompress(chunk[4:])  # this package's database is zlib-compressed (type 1)
    assert len(out) == size
    return out


def read_object(deb: Path, name: str) -> list[str]:
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    if digest != DEB_SHA256:
        raise SystemExit(f"{deb}: sha256 {digest}, expected {DEB_SHA256} (r-cran-janeaustenr 1.0.0-1)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        index = _Reader(gzip.decompress(Path(tmp, DATA + ".rdx").read_bytes())).item()
        rdb = Path(tmp, DATA + ".rdb").read_bytes()
    variables = index["values"][0]
    where = dict(zip(_names(variables), variables["values"]))[name]["values"]
    return _Reader(_entry(rdb, *where)).item()["values"]


def main(deb: str, out: str) -> None:
    lines = read_object(Path(deb), OBJECT)
    text = "\n".join(lines[: lines.index(STOP)]).rstrip("\n") + "\n"
    Path(out).write_text(text, encoding="utf-8")
    print(f"{out}: {len(text.encode())} bytes, {len(text.split())} words, sha256 {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
