"""Inputs: URL normalization, every input format, <img> extraction from HTML and WARC."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.crawl.errors import CrawlError, ErrorCode, InputError
from curation.crawl.html import extract_image_urls, parse_srcset
from curation.crawl.plan import plan_crawl
from curation.crawl.urls import normalize_url, url_id


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("HTTP://Example.COM:80/a/../b.jpg?x=1#frag", "http://example.com/b.jpg?x=1"),
        ("https://example.com:443", "https://example.com/"),
        ("https://example.com", "https://example.com/"),
        ("  http://a.org/x.JPG  ", "http://a.org/x.JPG"),
        ("http://bücher.de/a b.jpg", "http://xn--bcher-kva.de/a%20b.jpg"),
        ("http://a.org/%7euser/x.jpg", "http://a.org/~user/x.jpg"),
        ("http://2130706433/x.jpg", "http://127.0.0.1/x.jpg"),
        ("http://0x7f.1/x.jpg", "http://127.0.0.1/x.jpg"),
        ("http://[::1]:8080/x.jpg", "http://[::1]:8080/x.jpg"),
    ],
)
def test_normalize(raw, expected):
    assert normalize_url(raw) == expected


@pytest.mark.parametrize(
    "raw, code",
    [
        ("ftp://a.org/x.jpg", ErrorCode.UNSUPPORTED_SCHEME),
        ("data:image/png;base64,AAAA", ErrorCode.UNSUPPORTED_SCHEME),
        ("javascript:alert(1)", ErrorCode.UNSUPPORTED_SCHEME),
        ("x.jpg", ErrorCode.INVALID_URL),
        ("http:///x.jpg", ErrorCode.INVALID_URL),
        ("http://[::1/x.jpg", ErrorCode.INVALID_URL),
    ],
)
def test_normalize_refusals(raw, code):
    with pytest.raises(CrawlError) as err:
        normalize_url(raw)
    assert err.value.code == code


def test_relative_urls_resolve_against_the_base():
    base = "http://site.org/dir/page.html"
    assert normalize_url("img/a.jpg", base) == "http://site.org/dir/img/a.jpg"
    assert normalize_url("../a.jpg", base) == "http://site.org/a.jpg"
    assert normalize_url("//cdn.org/a.jpg", "https://site.org/") == "https://cdn.org/a.jpg"


def test_ids_are_stable_and_distinct():
    assert url_id("http://a.org/x.jpg") == url_id("http://a.org/x.jpg")
    assert url_id("http://a.org/x.jpg") != url_id("http://a.org/y.jpg")
    assert len(url_id("http://a.org/x.jpg")) == 32


def test_srcset_parsing():
    assert parse_srcset("a.jpg 1x, b.jpg 2x") == [("a.jpg", 1.0), ("b.jpg", 2.0)]
    assert parse_srcset("s.jpg 320w,l.jpg 1280w") == [("s.jpg", 320.0), ("l.jpg", 1280.0)]
    assert parse_srcset("a,b.jpg 100w, c.jpg") == [("a,b.jpg", 100.0), ("c.jpg", 1.0)]
    assert parse_srcset("x.jpg,, y.jpg 2x") == [("x.jpg", 1.0), ("y.jpg", 2.0)]


def test_img_extraction_src_srcset_data_src_and_base():
    html = """<html><head><base href="/assets/"></head><body>
      <img src="a.jpg"><img data-src="lazy.jpg" src="data:image/gif;base64,R0l=">
      <img srcset="small.jpg 320w, big.jpg 1280w" src="fallback.jpg">
      <picture><source srcset="p1.webp 1x, p2.webp 2x"><img src="p.jpg"></picture>
      <img src="a.jpg"><IMG SRC='upper.jpg'><img alt="no source">
    </body></html>"""
    base, urls = extract_image_urls(html)
    assert base == "/assets/"
    assert urls == ["a.jpg", "lazy.jpg", "fallback.jpg", "big.jpg", "p2.webp", "p.jpg", "upper.jpg"]


def _write_inputs(tmp_path):
    urls = [f"http://img.org/{i}.jpg" for i in range(3)]
    (tmp_path / "a.txt").write_text(f"# comment\n{urls[0]}\n\n{urls[1]}\n")
    (tmp_path / "b.csv").write_text(f"caption,url\nhello,{urls[2]}\nempty,\nagain,{urls[0]}\n")
    (tmp_path / "c.tsv").write_text(f"link\tx\n{urls[1]}#frag\t1\n")
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"url": "http://img.org/3.jpg"}) + "\n{broken\n" + json.dumps({"u": 1}) + "\n"
    )
    pq.write_table(pa.table({"url": ["http://img.org/4.jpg", None]}), tmp_path / "e.parquet")
    return urls


def test_every_list_format_in_order_with_duplicates_removed(tmp_path):
    _write_inputs(tmp_path)
    paths = [tmp_path / n for n in ("a.txt", "b.csv", "d.jsonl", "e.parquet")]
    plan = plan_crawl(paths)
    assert [r.url for r in plan.rows] == [f"http://img.org/{i}.jpg" for i in (0, 1, 2, 3, 4)]
    assert plan.input_records == 6 and plan.duplicates_removed == 1
    assert len(plan.problems) == 4  # empty csv cell, broken json, json without url, null
    assert any("b.csv:3" in p for p in plan.problems)
    assert any("d.jsonl:2: not JSON" in p for p in plan.problems)


def test_url_column_is_configurable_and_checked(tmp_path):
    _write_inputs(tmp_path)
    plan = plan_crawl([tmp_path / "c.tsv"], url_column="link")
    assert [r.url for r in plan.rows] == ["http://img.org/1.jpg"]
    with pytest.raises(InputError, match=r"c.tsv: no column 'url'; columns are \['link', 'x'\]"):
        plan_crawl([tmp_path / "c.tsv"])
    with pytest.raises(InputError, match="e.parquet: no column 'link'"):
        plan_crawl([tmp_path / "e.parquet"], url_column="link")


def test_unusable_input_files_fail_before_any_download(tmp_path):
    with pytest.raises(InputError, match="missing.txt: no such input file"):
        plan_crawl([tmp_path / "missing.txt"])
    (tmp_path / "x.xlsx").write_text("?")
    with pytest.raises(InputError, match="x.xlsx: unknown input format"):
        plan_crawl([tmp_path / "x.xlsx"])


def test_a_url_column_of_another_type_and_binary_lines_are_named(tmp_path):
    pq.write_table(pa.table({"url": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(InputError, match=r"ints.parquet: column 'url' holds int64, expected "
                                         r"strings \(URLs\)"):  # fmt: skip
        plan_crawl([tmp_path / "ints.parquet"])
    (tmp_path / "mixed.txt").write_bytes(
        b"http://a.org/1.jpg\n\x89PNG\x00\xff\xfe\nhttp://a.org/2.jpg\n"
    )
    plan = plan_crawl([tmp_path / "mixed.txt"])
    assert [r.url for r in plan.rows] == ["http://a.org/1.jpg", "http://a.org/2.jpg"]
    assert plan.problems == [f"{tmp_path / 'mixed.txt'}:2: not UTF-8 text; skipped"]


def test_html_file_input_resolves_against_its_base(tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<base href="http://site.org/gallery/"><img src="a.jpg"><img src="/b.jpg">')
    plan = plan_crawl([page])
    assert [r.url for r in plan.rows] == ["http://site.org/gallery/a.jpg", "http://site.org/b.jpg"]
    assert plan.rows[0].page_url == page.resolve().as_uri()


def _warc(records) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for uri, ctype, body in records:
        headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
        record = writer.create_warc_record(
            uri, "response", payload=io.BytesIO(body), http_headers=headers
        )
        writer.write_record(record)
    return buf.getvalue()


def test_warc_pages_give_urls_with_their_page(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    path.write_bytes(
        _warc(
            [
                ("http://site.org/p/1.html", "text/html; charset=utf-8", b'<img src="x.jpg">'),
                ("http://site.org/logo.png", "image/png", b"\x89PNG..."),
                ("http://other.org/", "text/html", b'<img srcset="//cdn.org/a.jpg 2x">'),
            ]
        )
    )
    plan = plan_crawl([path])
    assert [(r.url, r.page_url) for r in plan.rows] == [
        ("http://site.org/p/x.jpg", "http://site.org/p/1.html"),
        ("http://cdn.org/a.jpg", "http://other.org/"),
    ]


def test_corrupt_warc_keeps_what_came_before_and_reports_the_rest(tmp_path):
    path = tmp_path / "bad.warc.gz"
    path.write_bytes(_warc([("http://s.org/", "text/html", b'<img src="a.jpg">')]) + b"junk" * 50)
    plan = plan_crawl([path])
    assert [r.url for r in plan.rows] == ["http://s.org/a.jpg"]
    assert len(plan.problems) == 1 and "bad.warc.gz: WARC unreadable" in plan.problems[0]


def test_invalid_urls_become_rows_with_their_error(tmp_path):
    (tmp_path / "u.txt").write_text("ftp://x.org/a.jpg\nnot a url\nhttp://ok.org/a.jpg\n")
    plan = plan_crawl([tmp_path / "u.txt"])
    assert [(r.url, r.error and r.error.code) for r in plan.rows] == [
        ("ftp://x.org/a.jpg", ErrorCode.UNSUPPORTED_SCHEME),
        ("not a url", ErrorCode.INVALID_URL),
        ("http://ok.org/a.jpg", None),
    ]
