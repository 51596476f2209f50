"""WARC round trip (= warcio's and FastWARC's own readers), damaged files counted, never a crash."""

from __future__ import annotations

import gzip
import io

import pytest
from warcio.archiveiterator import ArchiveIterator

from llmbook.data.extract import extract_main_text
from llmbook.data.warc import WarcReadReport, gzip_members, read_warc, write_warc

PAGES = [
    ("https://example.org/a", "<html><body><p>First page, plain UTF-8: naïve café.</p></body></html>".encode()),
    ("https://example.org/b", "<html><body><p>Zweite Seite: Grüße aus Köln.</p></body></html>".encode("latin-1"),
     {"Content-Type": "text/html; charset=ISO-8859-1", "Server": "test"}),
    ("https://example.org/c", b"<html><body><p>" + b"long page " * 3000 + b"</p></body></html>"),
    ("https://example.org/d.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), {"Content-Type": "image/png"}),
    ("https://example.org/gone", b"<html><body>Not here</body></html>", None, 404),
]


@pytest.fixture
def warc_path(tmp_path):
    path = tmp_path / "pages.warc.gz"
    assert write_warc(path, PAGES, warcinfo={"software": "llmbook test"}) == len(PAGES)
    return path


def test_round_trip_returns_the_same_bytes_and_reports_what_it_skips(warc_path) -> None:
    report = WarcReadReport()
    pages = list(read_warc(warc_path, report))
    assert [p.url for p in pages] == ["https://example.org/a", "https://example.org/b", "https://example.org/c"]
    assert [p.body for p in pages] == [PAGES[0][1], PAGES[1][1], PAGES[2][1]]
    assert [p.charset for p in pages] == ["utf-8", "ISO-8859-1", "utf-8"]
    assert len({p.record_id for p in pages}) == 3 and all(p.record_id.startswith("<urn:uuid:") for p in pages)
    assert report.pages == 3
    assert dict(report.skipped) == {"not_response": 1, "non_html": 1, "non_200": 1}
    # the declared charset goes to the extractor: the latin-1 page decodes right
    assert "Grüße aus Köln" in extract_main_text(pages[1].body, declared_charset=pages[1].charset).text
    assert [p.url for p in read_warc(warc_path, html_only=False)][-1] == "https://example.org/d.png"


def test_warcio_and_fastwarc_read_our_file_identically(warc_path) -> None:
    ours = {p.record_id: (p.url, p.body) for p in read_warc(warc_path, html_only=False)}
    with open(warc_path, "rb") as f:
        theirs = {r.rec_headers.get_header("WARC-Record-ID"): (r.rec_headers.get_header("WARC-Target-URI"),
                                                              r.content_stream().read())
                  for r in ArchiveIterator(f) if r.rec_type == "response" and r.http_headers.get_statuscode() == "200"}
    assert ours == theirs and len(ours) == 4
    fastwarc = pytest.importorskip("fastwarc.warc")
    with open(warc_path, "rb") as f:
        fast = {}
        for r in fastwarc.ArchiveIterator(f, record_types=fastwarc.WarcRecordType.response, parse_http=True):
            if r.http_headers.status_code == 200:
                fast[r.record_id] = (r.headers["WARC-Target-URI"], r.reader.read())
    assert fast == ours


def test_truncated_file_yields_the_complete_records_and_one_truncated_reason(warc_path, tmp_path) -> None:
    data = warc_path.read_bytes()
    members = [off for off, _ in gzip_members(io.BytesIO(data), WarcReadReport())]
    assert len(members) == 1 + len(PAGES)  # warcinfo + one member per page
    cut_at = members[3] + (members[4] - members[3]) // 2  # in the middle of the third page's record ("c")
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[:cut_at])
    report = WarcReadReport()
    pages = list(read_warc(cut, report))
    assert [p.url for p in pages] == ["https://example.org/a", "https://example.org/b"]
    assert report.skipped["truncated"] == 1 and report.skipped_records[-1][:2] == (members[3], "truncated")
    # cut just before the gzip trailer: the body is all there but the member is not; still "truncated"
    cut.write_bytes(data[: members[3] - 4])
    report = WarcReadReport()
    assert [p.url for p in read_warc(cut, report)] == ["https://example.org/a"]
    assert dict(report.skipped) == {"not_response": 1, "truncated": 1}


def test_corrupt_member_is_skipped_and_reading_goes_on(warc_path, tmp_path) -> None:
    data = bytearray(warc_path.read_bytes())
    members = [off for off, _ in gzip_members(io.BytesIO(bytes(data)), WarcReadReport())]
    mid = members[1] + (members[2] - members[1]) // 2
    data[mid : mid + 8] = b"\xff" * 8  # damage the first page's compressed bytes
    bad = tmp_path / "bad.warc.gz"
    bad.write_bytes(bytes(data))
    report = WarcReadReport()
    assert [p.url for p in read_warc(bad, report)] == ["https://example.org/b", "https://example.org/c"]
    assert report.skipped["corrupt"] == 1


def test_uncompressed_warc_and_garbage_files(warc_path, tmp_path) -> None:
    plain = tmp_path / "pages.warc"
    with gzip.open(warc_path, "rb") as f:  # gzip.open reads all members: the plain WARC
        plain.write_bytes(f.read())
    assert [p.body for p in read_warc(plain)] == [PAGES[0][1], PAGES[1][1], PAGES[2][1]]
    report = WarcReadReport()
    plain_cut = tmp_path / "cut.warc"
    plain_cut.write_bytes(plain.read_bytes()[: plain.read_bytes().index(b"long page") + 100])
    assert [p.url for p in read_warc(plain_cut, report)] == ["https://example.org/a", "https://example.org/b"]
    assert report.skipped["truncated"] == 1
    for junk in (b"", b"\x1f\x8b\x08" + b"\x00" * 50, b"not a warc at all\n" * 10):
        path = tmp_path / "junk.warc.gz"
        path.write_bytes(junk)
        report = WarcReadReport()
        assert list(read_warc(path, report)) == []
    with pytest.raises(ValueError, match="existing WARC file"):
        read_warc(tmp_path / "missing.warc.gz")  # refused when called, before any page is read
    with pytest.raises(ValueError, match=r"\(url, body\[, headers\[, status\]\]\)"):
        write_warc(tmp_path / "x.warc.gz", [("https://example.org/",)])
