"""Readers that turn input files into image URL records, one format each.

URL lists: ``.txt`` (one per line, ``#`` comments), ``.csv``, ``.tsv``, ``.jsonl`` and
``.parquet`` (a configurable column). Pages: ``.html``/``.htm`` files and ``.warc``/
``.warc.gz`` archives, whose ``<img>`` URLs are extracted. A file that cannot be used at
all (missing, unknown format, no such column) raises :class:`InputError` before anything
is downloaded; a bad row is reported as a problem naming the file and row, and skipped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from warcio.archiveiterator import ArchiveIterator
from yarl import URL

from curation.crawl.errors import InputError
from curation.crawl.html import extract_image_urls


@dataclass(frozen=True)
class UrlRecord:
    url: str  # as written in the input
    page_url: str | None = None  # the page it was found on
    base: str | None = None  # what a relative ``url`` resolves against


ProblemSink = Callable[[str], None]


def input_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in (
        (".warc.gz", "warc"),
        (".warc", "warc"),
        (".txt", "txt"),
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".parquet", "parquet"),
        (".html", "html"),
        (".htm", "html"),
    ):
        if name.endswith(suffix):
            return fmt
    raise InputError(
        f"{path}: unknown input format; expected .txt, .csv, .tsv, .jsonl, .parquet, "
        ".html/.htm or .warc/.warc.gz"
    )


def read_records(
    paths: list[str | Path], url_column: str = "url", problem: ProblemSink = lambda _: None
) -> Iterator[UrlRecord]:
    """All records of all inputs, in order."""
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise InputError(f"{path}: no such input file")
        reader = _READERS[input_format(path)]
        yield from reader(path, url_column, problem)


def _read_txt(path: Path, _column: str, problem: ProblemSink) -> Iterator[UrlRecord]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            url = line.strip()
            if "\ufffd" in url or "\x00" in url:  # undecodable or NUL bytes: not a text file
                problem(f"{path}:{line_no}: not UTF-8 text; skipped")
            elif url and not url.startswith("#"):
                yield UrlRecord(url)


def _read_delimited(delimiter: str):
    def read(path: Path, column: str, problem: ProblemSink) -> Iterator[UrlRecord]:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            rows = csv.DictReader(f, delimiter=delimiter)
            if column not in (rows.fieldnames or []):
                raise InputError(
                    f"{path}: no column {column!r}; columns are {rows.fieldnames} "
                    "(choose one with --url-column)"
                )
            for line_no, row in enumerate(rows, start=2):
                url = (row.get(column) or "").strip()
                if url:
                    yield UrlRecord(url)
                else:
                    problem(f"{path}:{line_no}: empty {column!r} cell")

    return read


def _read_jsonl(path: Path, column: str, problem: ProblemSink) -> Iterator[UrlRecord]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problem(f"{path}:{line_no}: not JSON ({exc.msg})")
                continue
            url = obj.get(column) if isinstance(obj, dict) else None
            if isinstance(url, str) and url.strip():
                yield UrlRecord(url.strip())
            else:
                problem(f"{path}:{line_no}: no string {column!r} field")


def _read_parquet(path: Path, column: str, problem: ProblemSink) -> Iterator[UrlRecord]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    if column not in pf.schema_arrow.names:
        raise InputError(
            f"{path}: no column {column!r}; columns are {pf.schema_arrow.names} "
            "(choose one with --url-column)"
        )
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"{path}: column {column!r} holds {kind}, expected strings (URLs)")
    row = 0
    for batch in pf.iter_batches(columns=[column]):
        for url in batch.column(0).to_pylist():
            row += 1
            if isinstance(url, str) and url.strip():
                yield UrlRecord(url.strip())
            else:
                problem(f"{path}: row {row - 1}: empty {column!r} value")


def _page_records(html: bytes | str, page_url: str) -> Iterator[UrlRecord]:
    base_href, urls = extract_image_urls(html)
    base = str(URL(page_url).join(URL(base_href))) if base_href else page_url
    for url in urls:
        yield UrlRecord(url, page_url=page_url, base=base)


def _read_html(path: Path, _column: str, _problem: ProblemSink) -> Iterator[UrlRecord]:
    yield from _page_records(path.read_bytes(), path.resolve().as_uri())


def _read_warc(path: Path, _column: str, problem: ProblemSink) -> Iterator[UrlRecord]:
    """HTML ``response`` records of a WARC; the page URL is ``WARC-Target-URI``."""
    try:
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type != "response" or record.http_headers is None:
                    continue
                ctype = record.http_headers.get_header("Content-Type") or ""
                if "html" not in ctype.lower():
                    continue
                page_url = record.rec_headers.get_header("WARC-Target-URI")
                yield from _page_records(record.content_stream().read(), page_url)
    except Exception as exc:  # warcio raises many types on corrupt archives
        problem(f"{path}: WARC unreadable past this point ({type(exc).__name__}: {exc})")


_READERS = {
    "txt": _read_txt,
    "csv": _read_delimited(","),
    "tsv": _read_delimited("\t"),
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "html": _read_html,
    "warc": _read_warc,
}
