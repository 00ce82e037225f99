"""Manifest IO: atomic Parquet shards, schema validation, WebDataset-style tar shards."""

from __future__ import annotations

import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from manifests.atomic import atomic_path
from manifests.errors import ManifestError, SchemaMismatchError
from manifests.image_rows import ImageBytesReader
from manifests.image_shards import ImageShardReader, ImageShardWriter, iter_samples, ustar_header
from manifests.job import ResumeMismatchError, claim_directory
from manifests.parquet_io import ShardedParquet, read_manifest
from manifests.schemas import CONFIG_KEY, POOL, SCHEMA_KEY


def _pool_rows(n: int, shard: int = 0) -> pa.Table:
    rows = [
        {"id": f"{shard:02d}{i:030d}", "url": f"http://e.org/{shard}/{i}.jpg", "status": "ok",
         "shard": shard, "key": f"k{i}", "width": 10 + i,
         "fetch_time": datetime(2026, 1, 1, tzinfo=UTC)}
        for i in range(n)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=POOL.arrow)


def test_shards_commit_atomically_and_list_for_resume(tmp_path):
    store = ShardedParquet(tmp_path / "pool", POOL)
    store.write(0, _pool_rows(3), config={"seed": 1})
    store.write(2, _pool_rows(2, shard=2))
    (tmp_path / "pool" / "00001.parquet.tmp-999").write_bytes(b"half a file")
    assert store.complete() == [0, 2]
    assert store.remove_partial() == 1
    table = store.read()
    assert table.num_rows == 5 and table.column("width").to_pylist() == [10, 11, 12, 10, 11]
    meta = pq.read_schema(store.path(0)).metadata
    assert meta[SCHEMA_KEY] == b"pool/2" and json.loads(meta[CONFIG_KEY]) == {"seed": 1}


def test_writes_store_the_schema_types_whatever_the_table_holds(tmp_path):
    store = ShardedParquet(tmp_path / "pool", POOL)
    exact = _pool_rows(2)
    wider = exact.set_column(POOL.names.index("width"), "width", pa.array([10, 11], pa.int64()))
    reordered = wider.select(list(reversed(POOL.names))).append_column("extra", pa.array([1, 2]))
    for index, table in enumerate((exact, reordered)):
        store.write(index, table, config={"run": index})
        stored = pq.read_schema(store.path(index))
        assert stored.equals(POOL.arrow, check_metadata=False)
        assert json.loads(stored.metadata[CONFIG_KEY]) == {"run": index}
    assert store.read().column("width").to_pylist() == [10, 11, 10, 11]


def test_a_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_validation_names_the_file_and_column(tmp_path):
    bad = _pool_rows(2).drop_columns(["url"])
    pq.write_table(bad, tmp_path / "00000.parquet")
    with pytest.raises(SchemaMismatchError, match=r"00000\.parquet: column 'url'"):
        read_manifest([tmp_path], POOL)
    wrong_type = _pool_rows(2).set_column(POOL.names.index("width"), "width", pa.array(["a", "b"]))
    pq.write_table(wrong_type, tmp_path / "00000.parquet")
    with pytest.raises(SchemaMismatchError, match=r"column 'width': expected int32, found string"):
        read_manifest([tmp_path / "00000.parquet"], POOL)


def test_a_file_of_another_schema_version_is_refused(tmp_path):
    table = _pool_rows(1).replace_schema_metadata({SCHEMA_KEY: b"pool/0"})
    pq.write_table(table, tmp_path / "00000.parquet")
    with pytest.raises(SchemaMismatchError, match="expected pool/2, found pool/0"):
        read_manifest([tmp_path], POOL)


def test_unreadable_or_missing_manifests_are_named(tmp_path):
    (tmp_path / "00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="00000.parquet: not a readable Parquet file"):
        read_manifest([tmp_path], POOL)
    with pytest.raises(ManifestError, match="nope: no such manifest"):
        read_manifest([tmp_path / "nope"], POOL)


def _write_tar(path, samples, writeback_bytes=16 << 20):
    with ImageShardWriter(path, writeback_bytes) as w:
        for key, data in samples.items():
            w.add(key, data, {"key": key, "n": len(data)})


@pytest.mark.parametrize("writeback_bytes", [16 << 20, 1])  # 1: writeback after every sample
def test_tar_shards_read_back_with_tarfile_webdataset_and_random_access(tmp_path, writeback_bytes):
    samples = {f"{i:032x}": bytes([i]) * (100 + i) for i in range(5)}
    path = tmp_path / "00000.tar"
    _write_tar(path, samples, writeback_bytes)
    with tarfile.open(path) as tar:
        assert tar.getnames()[:2] == [f"{0:032x}.jpg", f"{0:032x}.json"]
    assert {k: s["jpg"] for k, s in iter_samples(path)} == samples
    loaded = {s["__key__"]: s["jpg"] for s in wds.WebDataset(str(path), shardshuffle=False)}
    assert loaded == samples
    with ImageShardReader(path) as reader:
        assert reader.keys() == sorted(samples)
        assert reader.read(f"{3:032x}") == samples[f"{3:032x}"]
        assert reader.meta(f"{4:032x}") == {"key": f"{4:032x}", "n": 104}
        with pytest.raises(KeyError):
            reader.read("missing")


def test_threads_sharing_a_fresh_reader_read_every_image(tmp_path):
    """The geometric verifier reads images on threads through one reader: the first reads
    of a shard race to index and open it."""
    samples = {f"{i:032x}": bytes([i]) * (1000 + i) for i in range(64)}
    shards = [tmp_path / f"{s:05d}.tar" for s in range(4)]
    for s, path in enumerate(shards):
        _write_tar(path, dict(list(samples.items())[s::4]), 16 << 20)
    rows = [{"id": k, "source": str(shards[i % 4]), "key": k, "label": None}
            for i, k in enumerate(samples)]  # fmt: skip
    for _ in range(20):
        reader = ImageBytesReader()
        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(reader.read, rows * 4)) == list(samples.values()) * 4


def test_aborted_tar_writer_leaves_nothing(tmp_path):
    path = tmp_path / "00000.tar"
    with pytest.raises(ValueError), ImageShardWriter(path) as w:
        w.add("good", b"x", {})
        w.add("bad.key", b"x", {})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_tar_is_a_clear_error(tmp_path):
    path = tmp_path / "00000.tar"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ManifestError, match="00000.tar: not a readable tar shard"):
        ImageShardReader(path)


@pytest.mark.parametrize(
    "name, size", [("a" * 32 + ".jpg", 51234), ("k.json", 0), ("b" * 100, 8**11 - 1)]
)
def test_ustar_headers_match_tarfile(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def test_ustar_limits_are_refused():
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        ustar_header("c" * 101, 1)
    with pytest.raises(ValueError, match="8 GiB"):
        ustar_header("big.jpg", 8**11)


def test_images_are_found_whatever_their_extension(tmp_path):
    path = tmp_path / "00000.tar"
    with ImageShardWriter(path) as w:
        w.add("a", b"png-bytes", {}, ext="png")
        w.add("b", b"jpg-bytes", {})
    with ImageShardReader(path) as reader:
        assert reader.read_image("a") == b"png-bytes" and reader.read_image("b") == b"jpg-bytes"
        with pytest.raises(KeyError, match="no image member for key c"):
            reader.read_image("c")


def test_a_claimed_directory_resumes_only_the_same_job(tmp_path):
    job = {"inputs": "a.txt", "settings": {"size": 3, "mode": "x"}, "note": "free"}
    claim_directory(tmp_path, "job.json", job, has_output=False)
    other = {**job, "settings": {"size": 4, "mode": "x"}, "note": "changed"}
    claim_directory(tmp_path, "job.json", other, has_output=False)  # nothing to mix yet
    claim_directory(tmp_path, "job.json", job, has_output=False)
    claim_directory(tmp_path, "job.json", job, has_output=True)  # the same job resumes
    with pytest.raises(ResumeMismatchError, match=r"differs in \['settings.size'\]: settings"
                                                  r"\.size: 3 -> 4; see .*job.json"):  # fmt: skip
        claim_directory(tmp_path, "job.json", other, has_output=True, identity=("settings",))
    assert json.loads((tmp_path / "job.json").read_text()) == job  # the refused job not recorded
    claim_directory(tmp_path, "job.json", {**job, "note": "changed"}, True, identity=("inputs",))
    assert isinstance(ResumeMismatchError("x"), ManifestError)  # every CLI reports it in one line


def test_a_damaged_manifest_is_named_not_a_pyarrow_traceback(tmp_path):
    from manifests.image_rows import read_image_rows

    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "path": ["a.jpg"]}), path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ManifestError, match=r"m.parquet: not a readable Parquet file .*rerun the"):
        read_image_rows([path])
