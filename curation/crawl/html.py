"""``<img>`` URL extraction from HTML with a real parser (lexbor, via selectolax)."""

from __future__ import annotations

import re

from selectolax.lexbor import LexborHTMLParser

_SRC_ATTRS = ("src", "data-src")
_SRCSET_ATTRS = ("srcset", "data-srcset")
_DESCRIPTOR = re.compile(r"^(\d+(?:\.\d+)?)([wx])$")


def parse_srcset(value: str) -> list[tuple[str, float]]:
    """Candidates of a ``srcset`` as ``(url, size)``; size is the w or x descriptor (1x default).

    Follows the HTML spec's splitting: a URL is a run of non-space characters (trailing
    commas end it), its descriptors run to the next comma.
    """
    out: list[tuple[str, float]] = []
    pos, n = 0, len(value)
    while pos < n:
        while pos < n and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not value[pos].isspace():
            pos += 1
        url = value[start:pos]
        descriptors = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            end = value.find(",", pos)
            end = n if end < 0 else end
            descriptors, pos = value[pos:end].strip(), end
        if url:
            m = _DESCRIPTOR.match(descriptors.split()[0]) if descriptors else None
            out.append((url, float(m.group(1)) if m else 1.0))
    return out


def _largest(srcset: str) -> str | None:
    candidates = parse_srcset(srcset)
    return max(candidates, key=lambda c: c[1])[0] if candidates else None


def extract_image_urls(html: str | bytes) -> tuple[str | None, list[str]]:
    """The document's ``<base href>`` (or None) and its image URLs as written, in order.

    From each ``<img>`` (and ``<picture><source>``): ``src``, ``data-src`` and the largest
    candidate of ``srcset`` / ``data-srcset``; the other srcset candidates are the same
    picture at lower resolution. ``data:`` URIs are inline pixels, not links, and skipped.
    """
    tree = LexborHTMLParser(html if isinstance(html, str) else html.decode("utf-8", "replace"))
    base_node = tree.css_first("base[href]")
    base = base_node.attributes.get("href") if base_node else None
    urls: dict[str, None] = {}  # ordered set
    for node in tree.css("img, picture source"):
        attrs = node.attributes
        found = [attrs.get(a) for a in _SRC_ATTRS]
        found += [_largest(attrs[a]) for a in _SRCSET_ATTRS if attrs.get(a)]
        for url in found:
            url = (url or "").strip()
            if url and not url.lower().startswith("data:"):
                urls[url] = None
    return base, list(urls)
