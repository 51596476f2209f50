"""WARC files (ISO 28500, the web-archive format of Common Crawl): write pages as gzipped response records,
read the HTML pages back, and survive the damage real crawl files have (a download cut short, a corrupt member).

A ``.warc.gz`` file is a series of gzip members, one WARC record each, so a reader can skip a bad record and
go on with the next. Writing and the parsing of one record's headers use warcio (Webrecorder); the member
framing is read here with :mod:`zlib`, since warcio stops silently when a file ends inside a member: that is
how a truncated download is told from a complete one.
"""

from __future__ import annotations

import io
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

HTML_TYPES = ("text/html", "application/xhtml+xml")
SKIP_REASONS = ("truncated", "corrupt", "not_response", "no_http", "non_200", "non_html")
_GZIP_MAGIC = b"\x1f\x8b\x08"
_CHUNK = 1 << 16


@dataclass(kw_only=True, frozen=True)
class WarcPage:
    """One HTML response read from a WARC file."""

    url: str
    body: bytes  # the HTTP payload, as served (transfer and content encodings undone by warcio)
    charset: str | None  # the charset of the Content-Type header, if it names one
    record_id: str  # WARC-Record-ID, e.g. "<urn:uuid:...>"
    content_type: str
    status: int
    offset: int  # byte offset of the record (its gzip member) in the file


@dataclass(kw_only=True)
class WarcReadReport:
    """What :func:`read_warc` did: pages yielded and records skipped, counted by reason (see SKIP_REASONS)."""

    pages: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_records: list[tuple[int, str, str]] = field(default_factory=list)  # (offset, reason, url or "")

    def skip(self, offset: int, reason: str, url: str = "") -> None:
        self.skipped[reason] += 1
        self.skipped_records.append((offset, reason, url))


# ----------------------------------------------------------------------------- writing


def write_warc(path: str | Path, pages: Iterable[tuple], *, warcinfo: Mapping[str, str] | None = None) -> int:
    """Write pages as a gzipped WARC file of ``response`` records; returns the number of records written.

    Each page is ``(url, body)``, ``(url, body, headers)`` or ``(url, body, headers, status)``: ``body`` the
    HTML bytes, ``headers`` the HTTP response headers (default ``Content-Type: text/html; charset=utf-8``;
    Content-Length is set by the writer), ``status`` the HTTP status code (default 200). A ``warcinfo``
    record with the given fields comes first when ``warcinfo`` is given.
    """
    n = 0
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        if warcinfo is not None:
            writer.write_record(writer.create_warcinfo_record(Path(path).name, dict(warcinfo)))
        for page in pages:
            if not isinstance(page, tuple) or not 2 <= len(page) <= 4:
                raise ValueError(f"each page must be (url, body[, headers[, status]]), got {page!r:.80}")
            url, body = page[0], page[1]
            headers = dict(page[2]) if len(page) > 2 and page[2] is not None else {}
            status = int(page[3]) if len(page) > 3 else 200
            if not isinstance(url, str) or not isinstance(body, bytes | bytearray):
                raise ValueError(f"url must be str and body bytes, got {type(url).__name__}, {type(body).__name__}")
            headers.setdefault("Content-Type", "text/html; charset=utf-8")
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
            reason = _STATUS_TEXT.get(status, "Status")
            http = StatusAndHeaders(f"{status} {reason}", list(headers.items()), protocol="HTTP/1.1")
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(bytes(body)), http_headers=http)
            writer.write_record(record)
            n += 1
    return n


_STATUS_TEXT = {200: "OK", 301: "Moved Permanently", 302: "Found", 304: "Not Modified", 403: "Forbidden",
                404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}


# ----------------------------------------------------------------------------- reading


def gzip_members(stream: BinaryIO, report: WarcReadReport) -> Iterator[tuple[int, bytes]]:
    """(offset, decompressed bytes) of each complete gzip member. A member cut off by the end of the file is
    counted "truncated" and ends the iteration; a corrupt one is counted "corrupt" and the reader resumes at
    the next gzip header (each record is its own member, so the following records are intact)."""
    buf = b""  # compressed bytes from the current member's start on
    base = 0  # file offset of buf[0]
    eof = False

    def fill() -> None:
        nonlocal buf, eof
        chunk = stream.read(_CHUNK)
        eof = not chunk
        buf += chunk

    while True:
        if not buf and not eof:
            fill()
        if not buf:
            return
        dec = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer (CRC-32 checked)
        parts: list[bytes] = []
        pos = 0  # bytes of buf this member has consumed
        try:
            while not dec.eof:
                if pos == len(buf):
                    if eof:
                        break
                    fill()
                    continue
                parts.append(dec.decompress(buf[pos:]))
                pos = len(buf) - len(dec.unused_data) if dec.eof else len(buf)
        except zlib.error:
            report.skip(base, "corrupt")
            nxt, first = buf.find(_GZIP_MAGIC, 1), True
            while nxt < 0 and not eof:  # look for the next member's header further on
                keep = max(1 if first else 0, len(buf) - 2)  # a header may straddle two reads
                base, buf, first = base + keep, buf[keep:], False
                fill()
                nxt = buf.find(_GZIP_MAGIC)
            if nxt < 0:
                return
            base, buf = base + nxt, buf[nxt:]
            continue
        if not dec.eof:
            report.skip(base, "truncated")
            return
        yield base, b"".join(parts)
        base, buf = base + pos, buf[pos:]


def _records(path: Path, report: WarcReadReport) -> Iterator[tuple[int, object]]:
    """(offset, warcio record) for every complete record of a gzipped or plain WARC file."""
    with open(path, "rb") as f:
        gzipped = f.read(3) == _GZIP_MAGIC
        f.seek(0)
        if gzipped:
            for offset, member in gzip_members(f, report):
                try:
                    for record in ArchiveIterator(io.BytesIO(member)):
                        yield offset, record
                except (ArchiveLoadFailed, ValueError, EOFError):
                    report.skip(offset, "corrupt")
            return
        iterator = ArchiveIterator(f)
        try:
            for record in iterator:
                yield iterator.offset, record  # the record's start (get_record_offset() would consume it)
        except (ArchiveLoadFailed, ValueError, EOFError, zlib.error):
            report.skip(iterator.offset, "truncated")


def read_warc(path: str | Path, report: WarcReadReport | None = None, *, html_only: bool = True
              ) -> Iterator[WarcPage]:
    """The HTML pages (status 200 responses) of a WARC file, gzipped or not, in file order.

    Every record not yielded is counted in ``report`` (pass one to see them) with its reason: "truncated"
    (the file ends inside a record: iteration stops there), "corrupt" (a damaged gzip member: skipped, reading
    goes on), "not_response" (warcinfo, request, metadata records), "no_http" (a response without HTTP
    headers), "non_200" (redirects, errors), "non_html" (another Content-Type; set ``html_only=False`` to get
    every 200 response). Never raises on damaged content.
    """
    report = report if report is not None else WarcReadReport()
    path = Path(path)
    if not path.is_file():  # refused when called, not at the first page
        raise ValueError(f"path must be an existing WARC file, got {str(path)!r}")
    return _pages(path, report, html_only)


def _pages(path: Path, report: WarcReadReport, html_only: bool) -> Iterator[WarcPage]:
    for offset, record in _records(path, report):
        url = record.rec_headers.get_header("WARC-Target-URI") or ""
        if record.rec_type != "response":
            report.skip(offset, "not_response", url)
            continue
        if record.http_headers is None or not record.http_headers.statusline:
            report.skip(offset, "no_http", url)
            continue
        try:
            body = record.content_stream().read()
        except (OSError, ValueError, EOFError, zlib.error):
            report.skip(offset, "truncated", url)
            return
        if getattr(record.raw_stream, "limit", 0) > 0:  # fewer payload bytes than the record declared
            report.skip(offset, "truncated", url)
            return
        try:
            status = int(record.http_headers.get_statuscode() or 0)
        except ValueError:
            status = 0
        if status != 200:
            report.skip(offset, "non_200", url)
            continue
        content_type = record.http_headers.get_header("Content-Type") or ""
        media = content_type.split(";")[0].strip().lower()
        if html_only and media not in HTML_TYPES:
            report.skip(offset, "non_html", url)
            continue
        charset = None
        for param in content_type.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip("\"'")
        report.pages += 1
        yield WarcPage(url=url, body=body, charset=charset, content_type=content_type, status=status,
                       record_id=record.rec_headers.get_header("WARC-Record-ID") or "", offset=offset)
