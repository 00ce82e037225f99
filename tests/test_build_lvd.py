"""build_lvd end to end on the demo web: the funnel, the LVD manifest and the report; the
same manifest from the local, Ray and Beam engines; resume after a kill in every stage;
clear errors for bad inputs."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from curation.dedup.stage import hash_and_dedup
from curation.embed import embed_manifests, load_embedder
from curation.safety.stage import check_pool
from curation.tasks import ShardTasks
from manifests.config import ConfigError, load_config
from manifests.embeddings import EmbeddingStore
from manifests.errors import ManifestError
from manifests.image_rows import read_image_rows
from manifests.parquet_io import read_manifest, write_image_manifest
from manifests.schemas import DEDUP, HASHES, LVD, POOL, SAFETY
from pipelines import build_lvd as cli
from pipelines.build import MissingStageError, run_build
from pipelines.build_layout import BuildLayout
from pipelines.curation_config import CurationConfig
from pipelines.demo.run import demo_web
from pipelines.engines.local import LocalEngine
from pipelines.lvd_stages import STAGE_NAMES, STAGES, Build, Sources
from training.data.dataset import ManifestImageDataset

STAGES_BY_NAME = {s.name: s for s in STAGES}
N_PHOTOS = 96  # + their copies: enough for the PCA hash, several shards per stage


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """The demo web, served for the whole module, and its recipe."""
    root = tmp_path_factory.mktemp("demo")
    with demo_web(root / "inputs", N_PHOTOS) as config:
        yield root, config


@pytest.fixture(scope="module")
def local_build(web):
    root, config = web
    out = root / "local"
    return out, run_build(out, config, LocalEngine(), progress=False)


def lvd_table(out: Path) -> pa.Table:
    """The LVD manifest without its image locations (they name the build directory)."""
    table = read_manifest([out / "retrieve" / "lvd"], LVD)
    return table.drop_columns(["path", "tar", "key"]).sort_by("id")


def assert_same_lvd(a: Path, b: Path) -> None:
    """Same rows and provenance; cosines equal to float32 summation order (faiss threads)."""
    ta, tb = lvd_table(a), lvd_table(b)
    assert ta.drop_columns(["best_similarity"]).equals(tb.drop_columns(["best_similarity"]))
    sa = np.array(ta.column("best_similarity").to_pylist(), dtype=float)
    sb = np.array(tb.column("best_similarity").to_pylist(), dtype=float)
    np.testing.assert_allclose(sa, sb, atol=1e-4)  # nulls (NaN) where taken as is


def dedup_table(out: Path) -> pa.Table:
    return read_manifest([out / "dedup" / "dedup"], DEDUP)


def test_demo_build_runs_every_stage_and_reconciles(web, local_build):
    out, results = local_build
    assert [r.stage for r in results] == list(STAGE_NAMES)
    assert all(r.status == "ran" for r in results)
    crawl = json.loads((out / "crawl" / "stats.json").read_text())
    n_copies = N_PHOTOS // 8 * 4  # one exact, near-exact, cropped or captioned copy each
    assert crawl["urls"] == N_PHOTOS + n_copies + 6  # + five hostile responses + a 404
    assert crawl["ok"] == N_PHOTOS + n_copies  # every hostile response is a failed row
    dedup = dedup_table(out)
    assert dedup.num_rows == crawl["ok"]  # one row per downloaded image, none lost
    reasons = Counter(dedup.column("reason").to_pylist())
    assert reasons["exact_duplicate"] == N_PHOTOS // 8  # the mirrored files
    assert {"hash_duplicate", "copy_duplicate", "evaluation_overlap"} <= set(reasons)
    funnel = json.loads((out / "dedup" / "dedup_stats.json").read_text())["funnel"]
    assert funnel["raw"] > funnel["after_exact"] > funnel["after_hash"] > funnel["after_copy"]
    assert funnel["after_relative"] < funnel["after_copy"]  # the evaluation copies went

    safety = read_manifest([out / "safety" / "manifest"], SAFETY).to_pylist()
    assert len(safety) == funnel["after_exact"]  # one image per exact group is checked
    blurred = {r["id"] for r in safety if r["blurred"]}
    unsafe = {r["id"] for r in safety if r["status"] != "ok"}
    assert len(blurred) >= 3  # the demo's photos of people (scikit-image's, opencv-doc's)

    lvd = read_manifest([out / "retrieve" / "lvd"], LVD)
    kept = set(dedup.filter(dedup.column("keep")).column("id").to_pylist())
    assert set(lvd.column("id").to_pylist()) <= kept - unsafe  # only kept, safe pool images
    curated = {r["id"]: r for r in read_image_rows([out / "retrieve" / "lvd"])}
    for id_ in blurred & set(curated):  # the trainer reads the blurred copy
        assert Path(curated[id_]["source"]).resolve().parent == out / "safety" / "images"
    page = (out / "report.html").read_text()
    assert "Safety" in page and f"<td>{len(blurred)}</td>" in page
    sets = {s for row in lvd.column("seed_sets").to_pylist() for s in row}
    assert sets == {"demo_sample", "demo_cluster", "demo_balanced"}
    balanced = [r for r in lvd.to_pylist() if "balanced" in r["methods"]]
    assert len(balanced) == 40 and {r["copies"] for r in balanced} == {1}
    sample = [r for r in lvd.to_pylist() if "sample" in r["methods"]]
    # each seed is an edited view of a pool photo: its nearest kept image is that photo
    assert max(r["best_similarity"] for r in sample) > 0.9
    dataset = ManifestImageDataset.from_manifests([out / "retrieve" / "lvd"])
    assert all(dataset[i] is not None for i in range(len(dataset)))  # the trainer reads it


def test_the_report_tells_the_whole_funnel_the_recipe_and_what_it_withholds(web, local_build):
    from pipelines.report import _duplicate_groups, _rows_by_id, _Thumbs

    _, config = web
    out, results = local_build
    page = (out / "report.html").read_text()
    summary = {r.stage: r.summary for r in results}
    candidates = summary["retrieve"]["candidates"]
    assert re.search(rf"after safety \(NSFW and unreadable dropped\): candidates</td><td>"
                     rf"{candidates}</td>", page)  # fmt: skip
    after_hash = summary["dedup"]["funnel"]["after_hash"]
    assert f"-> {after_hash:,} after hash (confirmed)" in STAGES_BY_NAME["dedup"].describe(
        summary["dedup"]
    )
    assert f"confirmed by descriptors)</td><td>{after_hash}</td>" in page  # console == report
    assert "Report written 20" in page and "<td>embed_pool</td><td>local</td>" in page
    assert f"k: {config.kmeans.k}" in page  # the recipe
    assert '<span class="label">demo_sample</span>' in page  # retrieval rows name their set
    assert page.count("<polyline") == 4  # the balanced draw's 2 levels, pool and curated
    build = BuildLayout(out)
    dedup = dedup_table(out).to_pylist()
    groups = Counter(r["copy_component"] for r in dedup)
    member = next(r for r in dedup if groups[r["copy_component"]] > 1)
    dropped = {r["id"] for r in dedup if r["exact_group"] == member["exact_group"]}
    hidden = {i: r for i, r in _rows_by_id([build.safe_manifest]).items()
              if i not in dropped}  # as if the safety stage had dropped it as NSFW  # fmt: skip
    shown = _duplicate_groups(build, _Thumbs(hidden))
    assert "not shown: dropped by the safety stage" in shown


def test_the_build_dedups_like_the_standalone_commands(web, local_build, tmp_path):
    """build_lvd checks and embeds one image per exact group; pipelines.safety,
    pipelines.embed and pipelines.dedup check and embed every image: the same groups, kept
    images and reasons either way."""
    _, config = web
    out, _ = local_build
    build = Build(out, config, LocalEngine(), Sources.read(config))
    check_pool([build.pool_manifest], tmp_path / "safety", config.safety, progress=False)
    embed_manifests([tmp_path / "safety" / "manifest"], load_embedder(build.copy_model),
                    tmp_path / "emb", config.embed, progress=False)  # fmt: skip
    evaluation = [build.eval_embeddings(name) for name in config.evaluation_sets]
    hash_and_dedup([build.pool_manifest], tmp_path, tmp_path / "emb", evaluation, config.dedup,
                   progress=False)  # fmt: skip
    cli = read_manifest([tmp_path / "dedup"], DEDUP)
    assert dedup_table(out).equals(cli)
    assert dict(Counter(cli.column("reason").to_pylist()))["hash_duplicate"] > 0


def test_a_rerun_skips_finished_stages_and_a_changed_setting_reruns_what_depends_on_it(
    web, local_build
):
    root, config = web
    out, _ = local_build
    before = lvd_table(out)
    again = run_build(out, config, LocalEngine(), progress=False)
    assert all(r.status == "skipped" for r in again)
    assert lvd_table(out).equals(before)
    config.search.nprobe += 1  # only retrieval depends on it (and the report on retrieval)
    try:
        changed = run_build(out, config, LocalEngine(), progress=False)
    finally:
        config.search.nprobe -= 1
    ran = [r.stage for r in changed if r.status == "ran"]
    assert ran == ["retrieve", "report"]
    config.dedup.copy.min_inliers += 1  # copy dedup and what follows it; not the hashes
    try:
        changed = run_build(out, config, LocalEngine(), progress=False)
    finally:
        config.dedup.copy.min_inliers -= 1
    assert [r.stage for r in changed if r.status == "ran"] == ["dedup", "retrieve", "report"]
    restored = run_build(out, config, LocalEngine(), progress=False)  # back as it was
    assert [r.stage for r in restored if r.status == "ran"] == ["dedup", "retrieve", "report"]
    assert lvd_table(out).equals(before)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":  # same size, other bytes: only a checksum sees it
        path.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    else:
        path.unlink()


@pytest.mark.parametrize(
    "damaged, how, repaired",
    [
        ("crawl/manifest/pool/00002.parquet", "truncate", "crawl"),
        ("crawl/shards/00001.tar", "delete", "crawl"),
        ("embed_pool/retrieval/00003.npy", "truncate", "embed_pool"),
        ("hash/hashes/00000.parquet", "flip", "hash"),
    ],
)
def test_a_rerun_checks_what_it_skips_and_redoes_the_damaged_shards(
    web, local_build, tmp_path, damaged, how, repaired
):
    root, config = web
    reference, _ = local_build
    out = tmp_path / "build"
    shutil.copytree(reference, out)
    _damage(out / damaged, how)
    verify = how == "flip"
    if verify:  # sizes alone miss it
        assert all(r.status == "skipped" for r in run_build(out, config, LocalEngine(),
                                                            progress=False))  # fmt: skip
    results = {r.stage: r.status for r in run_build(out, config, LocalEngine(), progress=False,
                                                    verify=verify)}  # fmt: skip
    assert results[repaired] == "repaired", results
    before = STAGE_NAMES[: STAGE_NAMES.index(repaired)]
    assert all(results[s] == "skipped" for s in before if s != "embed_seeds"), results
    assert (out / damaged).exists()
    assert dedup_table(out).equals(dedup_table(reference))
    assert_same_lvd(out, reference)
    again = run_build(out, config, LocalEngine(), progress=False, verify=True)
    assert all(r.status == "skipped" for r in again)


def test_a_moved_build_still_locates_its_images(local_build, tmp_path):
    reference, _ = local_build
    moved = tmp_path / "elsewhere" / "build"
    shutil.copytree(reference, tmp_path / "copy")
    shutil.move(tmp_path / "copy", moved)  # as a build copied to other storage
    for manifest in (moved / "retrieve" / "lvd", moved / "hash" / "kept.parquet"):
        rows = read_image_rows([manifest])
        assert rows and all(Path(r["source"]).is_relative_to(moved) for r in rows)
        dataset = ManifestImageDataset(rows)
        assert all(dataset[i] is not None for i in range(len(dataset)))


def test_report_renders_its_images_in_headless_chromium(local_build, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None and not os.environ.get("LVD_REQUIRE_CHROMIUM"):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    assert chromium is not None, "LVD_REQUIRE_CHROMIUM is set: apt-get install chromium"
    out, _ = local_build
    page = (out / "report.html").read_text()
    for section in ("Funnel", "Table 15", "Duplicate groups", "Sample clusters", "Retrieval"):
        assert section in page
    # after load, the page records how many images decoded to real pixels
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.replace(
            "</body>",
            """<script>window.addEventListener('load', () => {
        const imgs = [...document.images];
        document.body.dataset.images = imgs.length;
        document.body.dataset.rendered = imgs.filter(i => i.naturalWidth > 0).length;
    });</script></body>""",
        )
    )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom"]  # fmt: skip
    dom = subprocess.run([chromium, *flags, probe.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    images = int(dom.split('data-images="')[1].split('"')[0])
    rendered = int(dom.split('data-rendered="')[1].split('"')[0])
    assert images >= 20 and rendered == images


def test_ray_engine_builds_the_same_manifest(web, local_build):
    from pipelines.engines.ray_engine import RayEngine

    root, config = web
    out, _ = local_build
    engine = RayEngine(num_cpus=2)
    try:
        results = run_build(root / "ray", config, engine, progress=False)
        with pytest.raises(ManifestError, match="no such manifest"):  # a task's own error
            engine.run_tasks(ShardTasks(read_manifest, [([str(root / "missing")], LVD)], "probe"))
    finally:
        engine.close()
    assert all(r.status == "ran" for r in results)
    safety = [read_manifest([d / "safety" / "manifest"], SAFETY) for d in (out, root / "ray")]
    assert safety[0].equals(safety[1])
    assert dedup_table(root / "ray").equals(dedup_table(out))
    assert_same_lvd(root / "ray", out)


def test_beam_engine_crawls_hashes_and_checks_safety_like_the_local_one(web, local_build):
    from pipelines.engines.beam_engine import BeamEngine

    root, config = web
    out, _ = local_build
    run_build(root / "beam", config, BeamEngine([]), ["crawl", "hash", "safety"], progress=False)
    timing = ["fetch_time", "fetch_s"]
    pool = [read_manifest([d / "crawl" / "manifest" / "pool"], POOL).drop_columns(timing)
            for d in (out, root / "beam")]  # fmt: skip
    assert pool[0].equals(pool[1])
    hashes = [read_manifest([d / "hash" / "hashes"], HASHES) for d in (out, root / "beam")]
    assert hashes[0].equals(hashes[1])
    near_exact = [read_manifest([d / "hash" / "dedup"], DEDUP) for d in (out, root / "beam")]
    assert near_exact[0].equals(near_exact[1])
    safety = [read_manifest([d / "safety" / "manifest"], SAFETY) for d in (out, root / "beam")]
    assert safety[0].equals(safety[1])  # same scores, boxes and (relative) image locations


def _start_build(config_path: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines.build_lvd", "--config", str(config_path),
           "--out", str(out), "--no-progress"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def test_a_build_killed_in_every_stage_resumes_to_the_same_manifest(web, local_build, tmp_path):
    root, config = web
    reference, _ = local_build
    config_path = tmp_path / "recipe.yaml"
    config_path.write_text(yaml.safe_dump(asdict(config)))
    out = tmp_path / "build"
    # kill once this exists: the first committed shard of a sharded stage, else its directory
    kill_when = {"crawl": "crawl/manifest/pool/00000.parquet", "hash": "hash/hashes/00000.parquet",
                 "safety": "safety/manifest/00000.parquet",
                 "embed_pool": "embed_pool/retrieval/00000.parquet", "dedup": "dedup",
                 "embed_seeds": "embed_seeds", "retrieve": "retrieve"}  # fmt: skip
    killed_in = []
    for stage in STAGE_NAMES[:-1]:
        proc = _start_build(config_path, out)
        while not (out / kill_when[stage]).exists() and proc.poll() is None:
            time.sleep(0.002)
        with contextlib.suppress(ProcessLookupError):  # unless it finished first
            os.killpg(proc.pid, signal.SIGKILL)  # the build and its worker processes
        output = proc.communicate()[0].decode()
        assert proc.returncode in (0, -signal.SIGKILL), output
        if not (out / stage / "stage.json").exists():
            killed_in.append(stage)
    # the sharded stages were killed with shards left to do; most others before finishing
    assert {"crawl", "hash", "safety", "embed_pool"} <= set(killed_in) and len(killed_in) >= 5, (
        killed_in
    )
    proc = _start_build(config_path, out)
    log = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, log
    assert dedup_table(out).equals(dedup_table(reference))
    assert_same_lvd(out, reference)


def test_clear_errors_for_bad_inputs(web, tmp_path, capsys):
    root, config = web
    recipe = asdict(config)
    path = tmp_path / "recipe.yaml"

    def build(*args: str) -> str:
        assert cli.main(["--out", str(tmp_path / "out"), "--no-progress", *args]) == 2
        return capsys.readouterr().err

    assert "no-such.yaml" in build("--config", str(tmp_path / "no-such.yaml"))
    path.write_text("seed_sets: [unclosed\n")
    assert "recipe.yaml" in build("--config", str(path))
    path.write_text(yaml.safe_dump({**recipe, "seeds": {**recipe["seeds"], "roots": {}}}))
    err = build("--config", str(path))
    assert "seed set demo_sample: no root; give --seed-root demo_sample=PATH" in err
    err = build("--config", str(path), "--seed-root", f"demo_sample={tmp_path / 'gone'}",
                "--seed-sets", "demo_sample", "--set", "evaluation_sets=[]")  # fmt: skip
    assert f"{tmp_path / 'gone'} does not exist; expected ROOT/<class>/*.jpg" in err
    flat = tmp_path / "flat"  # images straight in the root, no class folders
    flat.mkdir()
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(next(Path(config.seeds.roots["demo_sample"]).rglob("*.jpg")), flat / name)
    path.write_text(yaml.safe_dump(recipe))
    err = build("--config", str(path), "--seed-root", f"demo_sample={flat}")
    assert (f"seed set demo_sample: no images under {flat} (found 2 images directly in it, "
            "outside any folder); expected ROOT/<class>/*.jpg") in err  # fmt: skip
    assert not (tmp_path / "out" / "crawl").exists()  # checked before any stage ran
    (tmp_path / "empty.txt").write_text("\n")
    err = build("--config", str(path), "--urls", str(tmp_path / "empty.txt"))
    assert "empty.txt" in err and "no URLs in the inputs" in err
    err = build("--config", str(path), "--stages", "retrieve")
    assert "stage retrieve needs the output of stage safety" in err
    assert "--seed-sets" in build("--config", str(path), "--seed-sets", "imagenet22k")
    # flags the parser does not know are Beam pipeline options, with --engine beam only
    assert "unrecognized arguments: --runner=X" in build("--config", str(path), "--runner=X")
    with pytest.raises(MissingStageError, match="run it first: --stages safety"):
        run_build(tmp_path / "fresh", config, LocalEngine(), ["embed_pool"], progress=False)


def test_every_remedy_a_build_prints_works_when_followed(web, tmp_path, capsys):
    """A failed build's message names what to do; doing it gets the build further."""
    root, config = web
    recipe = asdict(config)
    recipe["crawl"]["fetch"]["allowed_networks"] = []  # the demo web is on loopback
    recipe["seeds"]["roots"] = {}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    args = ["--config", str(path), "--out", str(tmp_path / "out"), "--no-progress"]

    def build(*more: str) -> tuple[int, str]:
        rc = cli.main([*args, *more])
        return rc, capsys.readouterr().err.strip().splitlines()[-1] if rc else ""

    advice = re.compile(r"give --seed-root (?P<root>\w+)=PATH|pass (?P<flag>--allow-private-"
                        r"networks)|run it first: --stages (?P<stage>\w+)")  # fmt: skip
    wanted = ["embed_pool"]  # a late stage first: it names the stages it needs
    followed = set()
    for _ in range(12):
        rc, line = build("--stages", wanted[-1])
        if rc == 0:
            wanted.pop()
            if not wanted:
                break
            continue
        found = advice.search(line)
        assert found, line
        followed.add(found.lastgroup)
        if found["root"]:
            args += ["--seed-root", f"{found['root']}={config.seeds.roots[found['root']]}"]
        elif found["stage"]:
            wanted.append(found["stage"])
        else:
            args.append(found["flag"])
    assert not wanted and (tmp_path / "out" / "embed_pool" / "stage.json").exists()
    assert followed == {"root", "flag", "stage"}


def test_a_separate_copy_model_dedups_and_the_retrieval_model_retrieves(web, local_build,
                                                                        tmp_path):  # fmt: skip
    root, config = web
    reference, _ = local_build
    out = tmp_path / "two-models"
    # same recipe for crawl, hash and safety: reused, not rerun; the embeddings of the
    # model the recipe no longer names are replaced, not refused as another job's
    for stage in ("crawl", "hash", "safety", "embed_pool", "embed_seeds"):
        shutil.copytree(reference / stage, out / stage)
    tiny = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4),
                                                torch.nn.AdaptiveAvgPool2d(1),
                                                torch.nn.Flatten()))  # fmt: skip
    tiny.save(str(tmp_path / "tiny.pt"))
    two = copy.deepcopy(config)
    two.copy_model, two.model = config.model, f"torchscript:{tmp_path / 'tiny.pt'}@64"
    stages = ["crawl", "hash", "safety", "embed_pool", "dedup", "embed_seeds", "retrieve"]
    results = run_build(out, two, LocalEngine(), stages, progress=False)
    assert [r.status for r in results] == ["skipped"] * 3 + ["ran"] * 4
    assert EmbeddingStore(out / "embed_seeds" / "demo_sample").read()[1].shape[1] == 8
    assert EmbeddingStore(out / "embed_pool" / "copy").model == config.model
    assert EmbeddingStore(out / "embed_pool" / "retrieval").read()[1].shape[1] == 8
    assert dedup_table(out).equals(dedup_table(reference))  # copies: the same model decides


@pytest.mark.parametrize("name", ["paper", "local", "demo"])
def test_shipped_curation_recipes_validate_once_given_urls_and_roots(name, tmp_path):
    config = load_config(CurationConfig, f"configs/curation/{name}.yaml")
    with pytest.raises(ConfigError, match="no URL inputs"):
        config.validate()
    config.urls = ["urls.txt"]
    for set_name in {p.name for p in config.seed_sets} | set(config.evaluation_sets):
        config.seeds.roots[set_name] = str(tmp_path)
    config.validate()
    if name == "paper":  # Table 15: 3 taken as is, 3 sampled around, 20 clustered
        methods = Counter(p.method for p in config.seed_sets)
        assert methods == {"as_is": 3, "sample": 3, "cluster": 20}
        assert [p.neighbours for p in config.seed_sets if p.method == "sample"] == [4, 32, 4]


def test_the_shipped_ray_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = yaml.safe_load(Path("pipelines/cluster/gpu.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cluster)))  # `ray up` checks the same
    cluster["available_node_types"]["gpu_worker"]["gpus"] = 1  # not a key Ray knows
    with pytest.raises(Exception, match="additionalProperties|gpus"):
        validate_config(prepare_config(cluster))


def test_relative_directories_resolve_from_where_the_build_runs(web, local_build, tmp_path,
                                                                monkeypatch):  # fmt: skip
    root, config = web
    reference, _ = local_build
    monkeypatch.chdir(tmp_path)
    shutil.copytree(reference / "crawl", tmp_path / "rel" / "crawl")  # reused, not rerun
    run_build(Path("rel"), config, LocalEngine(), ["crawl", "hash", "safety", "embed_pool"],
              progress=False)  # fmt: skip
    ids, _ = EmbeddingStore(tmp_path / "rel" / "embed_pool" / "retrieval").read()
    safety = json.loads((reference / "safety" / "stage.json").read_text())["summary"]
    assert len(ids) == safety["kept"]


def test_a_stage_whose_images_all_fail_says_so(web, local_build, tmp_path):
    root, config = web
    reference, _ = local_build
    for stage in ("crawl", "hash"):
        shutil.copytree(reference / stage, tmp_path / stage)
    kept = tmp_path / "hash" / "kept.parquet"  # the images it lists are gone
    rows = [{"id": r["id"], "path": str(tmp_path / "gone" / f"{r['id']}.jpg")}
            for r in read_image_rows([kept])]  # fmt: skip
    write_image_manifest(rows, kept)
    with pytest.raises(
        ManifestError,
        match=rf"safety: no image of {len(rows)} kept: 0 NSFW, "
        rf"{len(rows)} unreadable \{{'FileNotFoundError'",
    ):
        run_build(tmp_path, config, LocalEngine(), ["safety"], progress=False)


def test_beams_setup_file_option_stages_the_package_for_remote_workers(tmp_path, monkeypatch):
    """--setup_file=./setup.py (the README's Dataflow example): Beam builds the package as
    an sdist for its workers; it must hold every module the Beam stages run."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.stager import Stager

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    Stager.create_job_resources(PipelineOptions(["--setup_file=./setup.py"]), str(tmp_path))
    (sdist,) = tmp_path.glob("lvd_builder-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"setup.cfg", "curation/crawl/crawler.py", "curation/dedup/stage.py",
            "curation/safety/stage.py", "manifests/image_rows.py",
            "pipelines/engines/beam_engine.py"} <= names  # fmt: skip


def test_beam_pipeline_options_pass_through_to_the_runner():
    from curation.local_runner import run_locally
    from pipelines.engines.beam_engine import BeamEngine

    engine = BeamEngine(["--runner=FlinkRunner", "--flink_master=localhost:8081"])
    assert engine._runner() == "FlinkRunner"
    assert engine.options.get_all_options()["flink_master"] == "localhost:8081"
    # only crawl and hash run on Beam; the others on this machine's runner
    assert engine.runner("crawl") == engine.run_tasks and engine.runner("embed_pool") is run_locally
    assert type(BeamEngine([])._runner()).__name__ == "FnApiRunner"  # local default


@pytest.fixture(scope="module")
def edited_build(web, tmp_path_factory):
    """A build of the demo web plus a URL list and seed folders of its own, to edit."""
    root, config = web
    mine = tmp_path_factory.mktemp("edited")
    config = copy.deepcopy(config)
    urls = mine / "urls.txt"
    urls.write_text(read_manifest([root / "local" / "crawl" / "manifest" / "pool"], POOL)
                    .column("url")[0].as_py() + "?listed\n")  # fmt: skip
    config.urls = [*config.urls, str(urls)]
    for name in ("demo_sample", "demo_eval"):
        shutil.copytree(config.seeds.roots[name], mine / name)
        config.seeds.roots[name] = str(mine / name)
    run_build(mine / "build", config, LocalEngine(), progress=False)
    return mine, config


def _ran(results) -> list[str]:
    return [r.stage for r in results if r.status != "skipped"]


def test_an_edited_url_list_recrawls_its_shard_and_rebuilds_what_follows(edited_build, web):
    mine, config = edited_build
    urls = mine / "urls.txt"
    first = urls.read_text().strip()
    urls.write_text(f"{first}\n{first.replace('?listed', '?appended')}\n")  # same name, more
    results = run_build(mine / "build", config, LocalEngine(), progress=False)
    assert _ran(results) == [s for s in STAGE_NAMES if s != "embed_seeds"]
    crawl = json.loads((mine / "build" / "crawl" / "stats.json").read_text())
    assert crawl["urls_this_run"] == crawl["urls"] - 16 * (crawl["shards_total"] - 1)
    pool = read_manifest([mine / "build" / "crawl" / "manifest" / "pool"], POOL)
    assert first.replace("?listed", "?appended") in pool.column("url").to_pylist()


def test_a_changed_seed_folder_reruns_only_the_stages_that_read_it(edited_build):
    mine, config = edited_build
    build = mine / "build"
    sample = Path(config.seeds.roots["demo_sample"])
    image = next(sample.rglob("*.jpg"))
    shutil.copy(image, image.with_name("added.jpg"))  # an image added to the seed folder
    results = run_build(build, config, LocalEngine(), progress=False)
    assert _ran(results) == ["embed_seeds", "retrieve", "report"]
    summary = {r.stage: r.summary for r in results}["embed_seeds"]
    assert summary["demo_sample"]["embedded"] == len(list(sample.rglob("*.jpg")))

    moved = mine / "sample_moved"
    shutil.copytree(sample, moved)  # the seed set pointed at another folder
    config.seeds.roots["demo_sample"] = str(moved)
    assert _ran(run_build(build, config, LocalEngine(), progress=False)) == [
        "embed_seeds",
        "retrieve",
        "report",
    ]

    evaluation = Path(config.seeds.roots["demo_eval"])
    (next(evaluation.rglob("*.jpg"))).unlink()  # an evaluation set changed: relative dedup
    results = run_build(build, config, LocalEngine(), progress=False)
    assert _ran(results) == ["dedup", "retrieve", "report"]
