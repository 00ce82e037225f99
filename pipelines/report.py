"""``DIR/report.html``: one self-contained page (images inlined) about a build: the funnel
from URLs to the curated set, the safety stage's counts and blurred faces, a Table-15-style
line per seed set, duplicate groups, sample clusters, and retrieval examples (a seed image
beside what it retrieved). Pool images are shown as the safety stage left them (faces
blurred); an image it dropped as NSFW is never shown."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import yaml

from manifests.atomic import write_bytes_atomic
from manifests.html_page import page, table
from manifests.image_rows import ImageBytesReader, open_image, read_image_rows
from manifests.parquet_io import read_manifest
from manifests.schemas import DEDUP, LVD, SAFETY
from pipelines.build_layout import BuildLayout

log = logging.getLogger(__name__)

THUMB = 112  # px, longer side
GROUPS, PER_GROUP = 8, 8  # grids: rows shown, images per row


def _rows_by_id(manifests: list[Path]) -> dict[str, dict[str, Any]]:
    existing = [m for m in manifests if m.exists()]
    return {r["id"]: r for r in read_image_rows(existing)} if existing else {}


class _Thumbs:
    """Inline JPEG thumbnails of manifest rows (an unreadable image shows its id only)."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows
        self.images = ImageBytesReader()

    def figure(self, id_: str, caption: str = "", css: str = "") -> str:
        row = self.rows.get(id_)
        img = ""
        if row is not None:
            try:
                with open_image(self.images.read(row)) as image:
                    image = image.convert("RGB")
                    image.thumbnail((THUMB, THUMB))
                    buf = io.BytesIO()
                    image.save(buf, "JPEG", quality=80)
                data = base64.b64encode(buf.getvalue()).decode()
                img = f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(id_)}">'
            except Exception as exc:  # noqa: BLE001 - the report shows what it can
                log.warning("report: cannot show %s: %s", id_, exc)
        return (f'<figure class="{css}">{img}<figcaption>{html.escape(caption)}'
                f"</figcaption></figure>")  # fmt: skip


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _funnel(build: BuildLayout) -> str:
    crawl = _json(build.crawl_stats)
    dedup = _json(build.dedup_stats).get("funnel", {})
    retrieval = _json(build.retrieval_stats)
    steps = [("URLs", crawl.get("urls")), ("downloaded", crawl.get("ok")),
             ("after exact dedup", dedup.get("after_exact")),
             ("after hash dedup (pairs confirmed by descriptors)", dedup.get("after_hash")),
             ("after copy dedup", dedup.get("after_copy")),
             ("after relative dedup", dedup.get("after_relative")),
             ("after safety (NSFW and unreadable dropped): candidates",
              retrieval.get("candidates")),
             ("curated (LVD manifest)", retrieval.get("images"))]  # fmt: skip
    top = max((n for _, n in steps if n), default=1)
    rows = [[name, "-" if n is None else f"{n:,}",
             f'<span class="bar" style="width:{300 * (n or 0) / top:.0f}px"></span>']
            for name, n in steps]  # fmt: skip
    errors = sorted(crawl.get("error_codes", {}).items(), key=lambda kv: -kv[1])
    failed = table(["crawl error", "URLs"], [[html.escape(k), v] for k, v in errors])
    return table(["step", "images", ""], rows) + "<h3>Failed downloads</h3>" + failed


def _safety(build: BuildLayout, thumbs: _Thumbs) -> str:
    s = _json(build.safety_stats)
    if not s:
        return "<p>No safety output.</p>"
    counts = table(["images checked", "dropped as NSFW", "unreadable", "with faces",
                     "faces blurred"],
                    [[f"{s['images']:,}", f"{s['nsfw']:,}", f"{s['errors']:,}",
                      f"{s['with_faces']:,}", f"{s['faces']:,}"]])  # fmt: skip
    blurred = read_manifest([build.safe_manifest], SAFETY, ["id", "blurred", "faces"])
    shown = blurred.filter(pc.field("blurred")).slice(0, 2 * PER_GROUP).to_pylist()
    figs = "".join(thumbs.figure(r["id"], f"{r['faces']} face" + "s" * (r["faces"] > 1))
                   for r in shown)  # fmt: skip
    return counts + (f'<div class="row">{figs}</div>' if figs else "<p>No faces found.</p>")


def _table15(build: BuildLayout) -> str:
    stats = _json(build.retrieval_stats)
    rows = [[html.escape(s["seed_set"]), s["method"], f"{s['seed_images']:,}",
             f"{s['retrieved']:,}", f"{s['after_cap']:,}", html.escape(s.get("note", ""))]
            for s in stats.get("seed_sets", [])]  # fmt: skip
    kmeans = stats.get("kmeans")
    sized = (f"<p>k-means: {kmeans['clusters']:,} clusters (kmeans.k = {kmeans['k']:,}, sized "
             "to the pool)</p>" if kmeans and kmeans["clusters"] < kmeans["k"] else "")  # fmt: skip
    return table(["seed set", "method", "seed images", "retrieved", "after cap", "note"],
                  rows) + sized  # fmt: skip


def _size_plot(level: dict[str, Any], width: int = 320, height: int = 180) -> str:
    """An inline SVG of one level's cluster sizes, largest first (log scale): the pool's
    (grey) and the balanced set's (blue)."""
    top = max(max(level["pool"]), 1)
    last = max(level["ranks"][-1], 1)
    scale = math.log10(1 + top)  # log(1 + size): an empty cluster sits below a singleton

    def line(sizes: list[int], colour: str) -> str:
        points = " ".join(
            f"{30 + (width - 40) * r / last:.1f},"
            f"{height - 20 - (height - 30) * math.log10(1 + n) / scale:.1f}"
            for r, n in zip(level["ranks"], sizes, strict=True)
        )
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'

    return (f'<svg width="{width}" height="{height}" role="img"><text x="30" y="12" '
            f'font-size="11">{level["k"]:,} clusters (log(1 + size); largest {top:,})</text>'
            f'{line(level["pool"], "#999")}{line(level["curated"], "#4a7bd0")}'
            f'<text x="30" y="{height - 4}" font-size="10">clusters by size, largest first'
            "</text></svg>")  # fmt: skip


def _balance(build: BuildLayout) -> str:
    stats = _json(build.retrieval_stats)
    parts = []
    for name, levels in (stats.get("balance") or {}).items():
        plots = "".join(f"<figure>{_size_plot(level)}<figcaption>level {i}</figcaption></figure>"
                        for i, level in enumerate(levels, 1))  # fmt: skip
        parts.append(f'<h3>{html.escape(name)}</h3><div class="row">{plots}</div>')
    if not parts:
        return "<p>No seed set used the balanced method.</p>"
    return ("<p>Cluster sizes of the hierarchical k-means, per level: the pool (grey) and the "
            "balanced set (blue). A balanced set is flat where the pool is not.</p>"
            + "".join(parts))  # fmt: skip


def _duplicate_groups(build: BuildLayout, thumbs: _Thumbs) -> str:
    files = build.dedup_manifest
    if not files.is_dir():
        return "<p>No dedup output.</p>"
    columns = ["id", "exact_group", "copy_component", "keep", "reason"]
    table = read_manifest([files], DEDUP, columns).to_pylist()
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    shown_as: dict[int, str] = {}  # exact group -> the member whose (safe) image is shown
    for row in table:
        groups[row["copy_component"]].append(row)
        if row["id"] in thumbs.rows:
            shown_as.setdefault(row["exact_group"], row["id"])
    shown = sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)[:GROUPS]
    parts = []
    for group in shown:
        figs = [thumbs.figure(shown_as.get(r["exact_group"], r["id"]),
                              "kept" if r["keep"] else (r["reason"] or ""),
                              "keep" if r["keep"] else "")
                if r["exact_group"] in shown_as else _withheld(r)
                for r in group[:PER_GROUP]]  # fmt: skip
        parts.append(f'<div class="row"><span class="label">{len(group)} images</span>'
                     f"{''.join(figs)}</div>")  # fmt: skip
    return "".join(parts) or "<p>No duplicate groups.</p>"


def _withheld(row: dict[str, Any]) -> str:
    """A group member the safety stage dropped (NSFW or unreadable): never shown."""
    return (
        '<figure><div class="withheld">not shown: dropped by the safety stage</div>'
        f"<figcaption>{html.escape(row['reason'] or '')}</figcaption></figure>"
    )


def _lvd_rows(build: BuildLayout) -> list[dict[str, Any]]:
    files = build.lvd_manifest
    return read_manifest([files], LVD).to_pylist() if files.is_dir() else []


def _clusters(lvd: list[dict[str, Any]], thumbs: _Thumbs, build: BuildLayout) -> str:
    clusters: dict[int, list[str]] = defaultdict(list)
    for row in lvd:
        if row["cluster"] is not None:
            clusters[row["cluster"]].append(row["id"])
    largest = sorted(clusters.items(), key=lambda kv: -len(kv[1]))[:GROUPS]
    parts = [f'<div class="row"><span class="label">cluster {c} ({len(ids)} images)</span>'
             + "".join(thumbs.figure(i) for i in ids[:PER_GROUP]) + "</div>"
             for c, ids in largest]  # fmt: skip
    if parts:
        return "".join(parts)
    notes = [f"{s['seed_set']}: {s.get('note', 'nothing retrieved')}"
             for s in _json(build.retrieval_stats).get("seed_sets", [])
             if s["method"] == "cluster"]  # fmt: skip
    if notes:
        return "<p>The cluster method retrieved no image: " + html.escape("; ".join(notes)) + "</p>"
    return "<p>No seed set used the cluster method.</p>"


def _retrieval_examples(lvd: list[dict[str, Any]], thumbs: _Thumbs) -> str:
    by_seed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in lvd:
        if "sample" in (row["methods"] or []):
            for seed in row["seed_ids"] or []:
                by_seed[seed].append(row)
    parts = []
    for seed, rows in sorted(by_seed.items())[:GROUPS]:
        rows = sorted(rows, key=lambda r: -(r["best_similarity"] or 0))[:PER_GROUP]
        figs = [thumbs.figure(r["id"], f"{r['best_similarity'] or 0:.2f}") for r in rows]
        seed_set = seed.split(":", 1)[0]  # seed ids are <seed set>:<image>
        parts.append(f'<div class="row"><span class="label">{html.escape(seed_set)}</span>'
                     f'{thumbs.figure(seed, "seed", "seed")}{"".join(figs)}</div>')  # fmt: skip
    return "".join(parts) or "<p>No seed set used the sample method.</p>"


def _about(build: BuildLayout, stages: list[str], recipe: dict[str, Any] | None) -> str:
    """When the report was written, each stage's status and time, and the recipe."""
    rows = []
    for stage in stages:
        marker = _json(build.dir(stage) / "stage.json")
        rows.append(
            [
                stage,
                marker.get("engine", "-"),
                f"{marker['seconds']:.1f}" if "seconds" in marker else "not finished",
            ]
        )
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = yaml.safe_dump(recipe, sort_keys=False) if recipe is not None else "(not recorded)"
    return (f"<p>Report written {written}.</p>"
            + table(["stage", "engine", "seconds"], rows)
            + f"<h3>Recipe</h3><pre>{html.escape(text)}</pre>")  # fmt: skip


def write_report(
    build: BuildLayout, stages: list[str] = (), recipe: dict[str, Any] | None = None
) -> Path:
    """Write the build's report page from its stage outputs (with the times of ``stages``
    and the ``recipe`` it was built with); returns its path."""
    seed_manifests = sorted(build.seed_manifests.glob("*.parquet"))
    # pool images as the safety stage left them: an exact duplicate, which it did not
    # check, is shown as the checked member of its exact group (the same bytes)
    thumbs = _Thumbs(_rows_by_id([build.safe_manifest, *seed_manifests]))
    lvd = _lvd_rows(build)
    sections = [
        ("Funnel", _funnel(build)),
        ("Safety (NSFW filter; faces blurred, as every later stage reads them)",
         _safety(build, thumbs)),
        ("Seed sets (as the paper's Table 15)", _table15(build)),
        ("Duplicate groups (green: the image kept)", _duplicate_groups(build, thumbs)),
        ("Sample clusters", _clusters(lvd, thumbs, build)),
        ("Balance (the balanced method: pool vs curated, per level)", _balance(build)),
        ("Retrieval examples (orange: the seed image; captions: cosine)",
         _retrieval_examples(lvd, thumbs)),
        ("Build: stages, times and recipe", _about(build, list(stages), recipe)),
    ]  # fmt: skip
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    write_bytes_atomic(build.report, page(f"LVD build {build.out}", body).encode())
    return build.report
