"""The curation recipe ``pipelines.build_lvd`` runs: inputs, seed sets and the settings of
every stage, as one YAML file (``configs/curation/paper.yaml`` mirrors the paper;
``configs/curation/local.yaml`` is a small one-machine recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from curation.crawl.config import CrawlConfig
from curation.dedup.stage import DedupConfig
from curation.embed import EmbedConfig
from curation.hierarchical_kmeans import HierarchyConfig
from curation.index import KMeansConfig, SearchConfig
from curation.retrieval import SeedSetPlan
from curation.safety.stage import SafetyConfig
from curation.seeds.registry import SeedSetsConfig, resolve
from manifests.config import ConfigError


@dataclass
class CurationConfig:
    urls: list[str] = field(default_factory=list)  # URL lists, HTML pages, WARC files
    # how each seed set is used (the paper's Table 15); embeddings/manifest are filled in
    seed_sets: list[SeedSetPlan] = field(default_factory=list)
    seeds: SeedSetsConfig = field(default_factory=SeedSetsConfig)  # roots and adapters
    evaluation_sets: list[str] = field(default_factory=list)  # relative dedup, via seeds
    model: str = "efficientnet_lite0"  # retrieval embedder (curation.embed); ViT-H/16 in the paper
    copy_model: str | None = None  # copy detection (SSCD in the paper); None: ``model``
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)  # NSFW filter, face blurring
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)  # balanced method
    rows_per_shard: int = 100_000  # LVD manifest
    seed: int = 0  # random choices of the cluster and balanced methods

    def select_seed_sets(self, names: list[str]) -> None:
        """Keep only the named seed sets (``--seed-sets``; a name may have several plans,
        e.g. ImageNet-22k taken as is and sampled around)."""
        known = {plan.name for plan in self.seed_sets}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"--seed-sets {','.join(unknown)}: not in the config's seed_sets "
                              f"(it has {sorted(known)})")  # fmt: skip
        self.seed_sets = [plan for plan in self.seed_sets if plan.name in names]

    def seed_set_names(self) -> list[str]:
        """The seed sets whose images the recipe reads (a balanced draw reads none)."""
        return list(dict.fromkeys(p.name for p in self.seed_sets if p.has_seeds))

    def validate(self) -> None:
        if not self.urls:
            raise ConfigError("no URL inputs: give --urls PATH... or urls: in the config")
        if not self.seed_sets:
            raise ConfigError("seed_sets: at least one seed set is required")
        for plan in self.seed_sets:
            plan.validate_method()
        self.hierarchy.validate()
        for name in self.seed_set_names() + self.evaluation_sets:
            adapter, root = resolve(name, self.seeds)
            if not Path(root).exists():
                raise ConfigError(f"seed set {name}: {root} does not exist; expected "
                                  f"{adapter.layout}")  # fmt: skip
