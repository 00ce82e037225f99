"""The stages of ``pipelines.build_lvd``: what each reads and writes under the build
directory, and how it hands its work to an engine.

crawl -> hash (sha256, pHash, PCA hash; exact and near-exact dedup) -> safety (NSFW filter
and face blurring of one image per exact group) -> embed_pool (the images safety kept, as
blurred) -> dedup (hash pairs confirmed, copy + relative dedup) -> embed_seeds ->
retrieve (the LVD manifest) -> report. Each writes ``DIR/<stage>/`` and, when finished,
``DIR/<stage>/stage.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from curation.crawl.crawler import run_crawl
from curation.dedup.policy import Reason
from curation.dedup.stage import hash_and_dedup, write_dedup
from curation.embed import embed_manifests, load_embedder
from curation.lvd_manifest import PoolInputs, RetrievalConfig, write_lvd_manifest
from curation.safety.stage import check_pool
from curation.seeds.registry import seed_set_source, write_seed_manifest
from manifests.atomic import write_bytes_atomic
from manifests.errors import ManifestError
from manifests.image_rows import read_image_rows, row_location
from manifests.parquet_io import ShardedParquet, read_manifest, write_image_manifest
from manifests.schemas import DEDUP, HASHES, LVD
from manifests.sources import file_digest
from pipelines.build_layout import BuildLayout
from pipelines.curation_config import CurationConfig
from pipelines.engines import Engine
from pipelines.report import write_report

# the stages that read seed or evaluation sets, and which
STAGE_READERS: dict[str, Callable[[CurationConfig], list[str]]] = {
    "dedup": lambda c: c.evaluation_sets,
    "embed_seeds": lambda c: c.seed_set_names(),
}


@dataclass(frozen=True)
class Sources:
    """Digests of what a build reads from outside it: a URL list edited or a seed folder
    changed under the same name reruns the stages that read it, and only those."""

    urls: list[str]  # each input's digest, in order (a file moved as it is is the same input)
    seed_sets: dict[str, str]  # seed or evaluation set -> seed_set_source

    @classmethod
    def read(cls, config: CurationConfig, stages: Collection[str] = STAGE_READERS) -> Sources:
        """Read the digests of what ``stages`` read; the layout of every seed and evaluation
        set they read is checked here, before any stage runs."""
        readers = [STAGE_READERS[stage] for stage in stages if stage in STAGE_READERS]
        names = dict.fromkeys(name for reader in readers for name in reader(config))
        return cls([file_digest(path) for path in config.urls],
                   {name: seed_set_source(name, config.seeds) for name in names})  # fmt: skip

    def of(self, names: list[str]) -> dict[str, str]:
        return {name: self.seed_sets[name] for name in dict.fromkeys(names)}


@dataclass(frozen=True)
class Build(BuildLayout):
    """One build directory, its recipe and the engine that runs it."""

    config: CurationConfig
    engine: Engine
    sources: Sources
    progress: bool = True

    @property
    def copy_model(self) -> str:
        return self.config.copy_model or self.config.model

    def pool_embeddings(self, model: str) -> Path:
        """Where embed_pool puts the pool's descriptors of the retrieval or copy model."""
        return self.dir("embed_pool") / ("retrieval" if model == self.config.model else "copy")

    def embed(self, manifests: list[Path], out: Path, model: str, stage: str,
              source: str = "") -> dict[str, int]:  # fmt: skip
        """Embed ``manifests`` into ``out``; embeddings there of another ``source`` (a seed
        set's earlier content) or another model (the recipe's changed) are removed first,
        those of the same ones resumed."""
        record = out.parent / f"{out.name}.source"
        made_of = json.dumps({"model": model, "source": source})
        if not record.exists() or record.read_text() != made_of:
            shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(record, made_of.encode())
        counts = embed_manifests(manifests, load_embedder(model), out, self.config.embed,
                                 self.progress, self.engine.runner(stage))  # fmt: skip
        if counts["embedded"] == 0:
            raise ManifestError(f"{stage}: none of the {counts['failed']} images of "
                                f"{[str(m) for m in manifests]} could be read (see the "
                                "warnings above)")  # fmt: skip
        return counts


def crawl(b: Build) -> dict[str, Any]:
    c = b.config
    s = run_crawl(c.urls, b.dir("crawl"), c.crawl, b.progress, b.engine.runner("crawl"))
    s.require_images()
    return {"urls": s.urls, "ok": s.ok, "error_codes": s.error_codes}


def hash_(b: Build) -> dict[str, Any]:
    """Hashes of the pool, its exact groups and its safe near-exact groups (no descriptors
    yet). One image per exact group is what embed_pool embeds: every hash pair beyond the
    safe radius is for the dedup stage to confirm by descriptor, so those need one."""
    stats = hash_and_dedup([b.pool_manifest], b.dir("hash"), config=b.config.dedup,
                           progress=b.progress, runner=b.engine.runner("hash"))  # fmt: skip
    unique = set(_exact_representatives(b.hash_groups))
    rows = [{"id": r["id"], **row_location(r)} for r in read_image_rows([b.pool_manifest])
            if r["id"] in unique]  # fmt: skip
    write_image_manifest(rows, b.kept_manifest, root=b.out)
    return {"funnel": stats["funnel"], "kept": len(rows)}


def _exact_representatives(dedup_manifest: Path) -> list[str]:
    table = read_manifest([dedup_manifest], DEDUP, ["id", "reason"])
    exact = pc.fill_null(pc.equal(table.column("reason"), Reason.EXACT_DUPLICATE.value), False)
    return table.filter(pc.invert(exact)).column("id").to_pylist()


def safety(b: Build) -> dict[str, Any]:
    """NSFW scores and face boxes of one image per exact group; the images kept, faces
    blurred, are what every later stage and the trainer read."""
    return check_pool([b.kept_manifest], b.dir("safety"), b.config.safety, b.out, b.progress,
                      b.engine.runner("safety"))  # fmt: skip


def embed_pool(b: Build) -> dict[str, Any]:
    """Descriptors of the images safety kept (one per exact group): the retrieval model's,
    and the copy model's when the recipe names another (SSCD for copies, ViT-H/16 for
    retrieval)."""
    models = dict.fromkeys([b.config.model, b.copy_model])
    return {m: b.embed([b.safe_manifest], b.pool_embeddings(m), m, "embed_pool") for m in models}


def dedup(b: Build) -> dict[str, Any]:
    evaluation = []
    for name in b.config.evaluation_sets:
        manifest, _ = write_seed_manifest(name, b.config.seeds, b.eval_manifests)
        evaluation.append(str(b.eval_embeddings(name)))
        b.embed([manifest], Path(evaluation[-1]), b.copy_model, "dedup", b.sources.seed_sets[name])
    hashes = ShardedParquet(b.hashes, HASHES).read()
    stats = write_dedup(hashes, [b.pool_manifest], b.dir("dedup"),
                        b.pool_embeddings(b.copy_model), evaluation, b.config.dedup, b.progress,
                        b.engine.runner("dedup"))  # fmt: skip
    return {"funnel": stats["funnel"], "reasons": stats["reasons"]}


def embed_seeds(b: Build) -> dict[str, Any]:
    """One manifest per seed set, and its embeddings unless every plan takes it as is."""
    plans = b.config.seed_sets
    summary = {}
    for name in b.config.seed_set_names():
        manifest, count = write_seed_manifest(name, b.config.seeds, b.seed_manifests)
        summary[name] = {"images": count}
        if any(p.needs_embeddings for p in plans if p.name == name):
            summary[name] |= b.embed([manifest], b.seed_embeddings(name), b.config.model,
                                     "embed_seeds", b.sources.seed_sets[name])  # fmt: skip
    return summary


def retrieve(b: Build) -> dict[str, Any]:
    c = b.config
    plans = [replace(plan, manifest=[str(b.seed_manifest(plan.name))] if plan.has_seeds else [],
                     embeddings=str(b.seed_embeddings(plan.name)) if plan.needs_embeddings
                     else "") for plan in c.seed_sets]  # fmt: skip
    embeddings = str(b.pool_embeddings(b.config.model))
    pool = PoolInputs([str(b.safe_manifest)], embeddings, str(b.dir("dedup")))
    config = RetrievalConfig(pool, plans, c.kmeans, c.search, c.hierarchy, c.rows_per_shard,
                             c.seed)  # fmt: skip
    return write_lvd_manifest(config, b.dir("retrieve"), b.out, b.engine.runner("retrieve"),
                              b.progress)  # fmt: skip


def report(b: Build) -> dict[str, Any]:
    recipe = json.loads(json.dumps(asdict(b.config), default=str))
    earlier = [s.name for s in STAGES if s.name != "report"]
    return {"report": str(write_report(b, earlier, recipe))}


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Build], dict[str, Any]]
    needs: tuple[str, ...]
    # the parts of the recipe its output depends on (with its inputs' fingerprints)
    settings: Callable[[CurationConfig, Sources], Any]
    describe: Callable[[dict[str, Any]], str]  # its summary, in a line a person reads


def _describe_crawl(s: dict[str, Any]) -> str:
    return f"{s['urls']:,} URLs: {s['ok']:,} images, {s['urls'] - s['ok']:,} failed"


def _describe_funnel(s: dict[str, Any], levels: dict[str, str]) -> str:
    """``levels``: funnel key -> what the line calls it (the report's funnel, the same)."""
    f = s["funnel"]
    return f"{f['raw']:,} images" + "".join(f" -> {f[f'after_{k}']:,} after {name}"
                                            for k, name in levels.items())  # fmt: skip


def _describe_safety(s: dict[str, Any]) -> str:
    return (
        f"{s['images']:,} images: {s['nsfw']:,} NSFW and {s['errors']:,} unreadable "
        f"dropped, {s['blurred']:,} with faces blurred ({s['faces']:,} faces)"
    )


def _describe_embedded(s: dict[str, Any]) -> str:
    return ", ".join(f"{name}: {c.get('embedded', c.get('images')):,}" for name, c in s.items())


def _describe_retrieval(s: dict[str, Any]) -> str:
    per_set = ", ".join(f"{t['seed_set']} ({t['method']}) {t['after_cap']:,}"
                        for t in s["seed_sets"])  # fmt: skip
    return f"{s['images']:,} curated of {s['candidates']:,} candidates: {per_set}"


STAGES = (
    Stage("crawl", crawl, (), lambda c, src: {"urls": src.urls, "crawl": c.crawl.output_settings()},
          _describe_crawl),
    Stage("hash", hash_, ("crawl",),  # copy settings are the dedup stage's
          lambda c, src: {k: v for k, v in asdict(c.dedup).items() if k != "copy"},
          lambda s: _describe_funnel(s, {"exact": "exact", "hash": "near-exact hash"})),
    Stage("safety", safety, ("hash",), lambda c, src: asdict(c.safety), _describe_safety),
    Stage("embed_pool", embed_pool, ("safety",),
          lambda c, src: {"model": c.model, "copy_model": c.copy_model, "embed": asdict(c.embed)},
          _describe_embedded),
    Stage("dedup", dedup, ("hash", "embed_pool"),
          lambda c, src: {"dedup": asdict(c.dedup), "evaluation_sets": src.of(c.evaluation_sets)},
          lambda s: _describe_funnel(s, {"hash": "hash (confirmed)", "copy": "copy",
                                         "relative": "relative"})),
    Stage("embed_seeds", embed_seeds, (),
          lambda c, src: {"seed_sets": [asdict(p) for p in c.seed_sets], "model": c.model,
                          "sources": src.of(c.seed_set_names()),
                          "embed": asdict(c.embed)},
          _describe_embedded),
    Stage("retrieve", retrieve, ("safety", "embed_pool", "dedup", "embed_seeds"),
          lambda c, src: {"kmeans": asdict(c.kmeans), "search": asdict(c.search),
                          "hierarchy": asdict(c.hierarchy), "manifest": LVD.tag,
                          "rows_per_shard": c.rows_per_shard, "seed": c.seed},
          _describe_retrieval),
    Stage("report", report, ("crawl", "hash", "safety", "dedup", "retrieve"), lambda c, src: None,
          lambda s: s["report"]),
)  # fmt: skip
STAGE_NAMES = tuple(s.name for s in STAGES)
