"""The layout of a build directory of ``pipelines.build_lvd``: ``DIR/<stage>/`` for every
stage of :mod:`pipelines.lvd_stages`, and the files in them that other stages, the report
and the summary read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curation.safety.stage import SafetyOutput


@dataclass(frozen=True)
class BuildLayout:
    """Where every stage of a build directory puts its output: the one place that knows."""

    out: Path

    def dir(self, stage: str) -> Path:
        return self.out / stage

    @property
    def pool_manifest(self) -> Path:
        return self.dir("crawl") / "manifest" / "pool"

    @property
    def crawl_stats(self) -> Path:
        return self.dir("crawl") / "stats.json"

    @property
    def hashes(self) -> Path:
        return self.dir("hash") / "hashes"

    @property
    def hash_groups(self) -> Path:  # exact and safe near-exact groups: a dedup manifest
        return self.dir("hash") / "dedup"

    @property
    def kept_manifest(self) -> Path:  # one image per exact group: what embed_pool embeds
        return self.dir("hash") / "kept.parquet"

    @property
    def safe_manifest(self) -> Path:  # the kept images, faces blurred: what later stages read
        return SafetyOutput(self.dir("safety")).manifest.root

    @property
    def safety_stats(self) -> Path:
        return SafetyOutput(self.dir("safety")).stats

    @property
    def dedup_manifest(self) -> Path:
        return self.dir("dedup") / "dedup"

    @property
    def dedup_stats(self) -> Path:
        return self.dir("dedup") / "dedup_stats.json"

    @property
    def eval_manifests(self) -> Path:
        return self.dir("dedup") / "eval_manifests"

    def eval_embeddings(self, name: str) -> Path:
        return self.dir("dedup") / "eval" / name

    @property
    def seed_manifests(self) -> Path:
        return self.dir("embed_seeds") / "manifests"

    def seed_manifest(self, name: str) -> Path:
        return self.seed_manifests / f"{name}.parquet"

    def seed_embeddings(self, name: str) -> Path:
        return self.dir("embed_seeds") / name

    @property
    def lvd_manifest(self) -> Path:
        return self.dir("retrieve") / "lvd"

    @property
    def retrieval_stats(self) -> Path:
        return self.dir("retrieve") / "retrieval_stats.json"

    @property
    def report(self) -> Path:
        return self.out / "report.html"
