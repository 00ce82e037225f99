"""Counts that must agree between the stages of a build: URLs -> images -> exact-group
representatives -> safe -> embedded -> kept -> curated. A stage whose output does not add up with
its input stops the build, naming both numbers, instead of losing rows without a word."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from manifests.errors import ManifestError

Summary = dict[str, Any]


class CountMismatchError(ManifestError):
    """A stage's output does not reconcile with its input."""


def _crawl(s: Summary, done: dict[str, Summary]) -> list[str]:
    failed = sum(s["error_codes"].values())
    return [] if s["ok"] + failed == s["urls"] else [
        f"{s['ok']} images + {failed} failed URLs != {s['urls']} URLs"
    ]  # fmt: skip


def _funnel_narrows(funnel: dict[str, int]) -> list[str]:
    steps = [(k, v) for k, v in funnel.items() if v is not None]
    return [f"{b} ({m:,}) holds more images than {a} ({n:,})"
            for (a, n), (b, m) in zip(steps, steps[1:], strict=False) if m > n]  # fmt: skip


def _hash(s: Summary, done: dict[str, Summary]) -> list[str]:
    images, f = done["crawl"]["ok"], s["funnel"]
    problems = _funnel_narrows(f)
    if f["raw"] != images:
        problems.append(f"{f['raw']} images hashed != {images} images crawled")
    if s["kept"] != f["after_exact"]:
        problems.append(f"{s['kept']} rows in the kept manifest != {f['after_exact']} "
                        "exact-group representatives")  # fmt: skip
    return problems


def _safety(s: Summary, done: dict[str, Summary]) -> list[str]:
    problems = []
    if s["kept"] + s["nsfw"] + s["errors"] != s["images"]:
        problems.append(f"{s['kept']} kept + {s['nsfw']} NSFW + {s['errors']} unreadable != "
                        f"{s['images']} images checked")  # fmt: skip
    if s["images"] != done["hash"]["kept"]:
        problems.append(f"{s['images']} images checked != {done['hash']['kept']} exact-group "
                        "representatives")  # fmt: skip
    return problems


def _embed_pool(s: Summary, done: dict[str, Summary]) -> list[str]:
    kept = done["safety"]["kept"]
    return [f"{model}: {c['embedded']} embedded + {c['failed']} failed != {kept} images to "
            "embed (the images safety kept)"
            for model, c in s.items() if c["embedded"] + c["failed"] != kept]  # fmt: skip


def _dedup(s: Summary, done: dict[str, Summary]) -> list[str]:
    f, hashed = s["funnel"], done["hash"]["funnel"]
    problems = _funnel_narrows(f)
    if (f["raw"], f["after_exact"]) != (hashed["raw"], hashed["after_exact"]):
        problems.append(f"{f['raw']} images, {f['after_exact']} after exact dedup != the hash "
                        f"stage's {hashed['raw']}, {hashed['after_exact']}")  # fmt: skip
    return problems


def _retrieve(s: Summary, done: dict[str, Summary]) -> list[str]:
    kept = done["dedup"]["funnel"]["after_relative"]
    unembedded = max(c["failed"] for c in done["embed_pool"].values())
    unsafe = done["safety"]["nsfw"] + done["safety"]["errors"]
    if kept - unembedded - unsafe <= s["candidates"] <= kept:
        return []
    return [f"{s['candidates']} retrieval candidates, but dedup kept {kept} images of which "
            f"{unembedded} could not be embedded and at most {unsafe} were dropped by "
            "safety"]  # fmt: skip


CHECKS: dict[str, Callable[[Summary, dict[str, Summary]], list[str]]] = {
    "crawl": _crawl, "hash": _hash, "safety": _safety, "embed_pool": _embed_pool, "dedup": _dedup,
    "retrieve": _retrieve,
}  # fmt: skip


def check_counts(stage: str, summary: Summary, inputs: dict[str, Summary]) -> None:
    """Raise CountMismatchError if ``stage``'s summary does not add up with its inputs'."""
    check = CHECKS.get(stage)
    problems = check(summary, inputs) if check else []
    if problems:
        raise CountMismatchError(f"stage {stage}: counts do not reconcile: {'; '.join(problems)}")
