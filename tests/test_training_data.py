"""Training data: manifests to decoded crops; bad images skipped and counted."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from manifests.errors import ManifestError
from manifests.image_shards import ImageShardWriter
from pipelines.demo.synthetic_images import encode, make_photo
from training.data.augmentations import MultiCropAugmentation, MultiCropConfig
from training.data.collate import MultiCropCollate
from training.data.dataset import ManifestImageDataset


@pytest.fixture
def manifest(tmp_path):
    with ImageShardWriter(tmp_path / "00000.tar") as tar:
        for i in range(6):
            tar.add(f"img{i}", encode(make_photo(i, 96, 80)), {})
        tar.add("broken", b"not an image", {})
    (tmp_path / "loose.png").write_bytes(encode(make_photo(9, 64, 64), "PNG"))
    table = pa.table(
        {
            "id": [f"img{i}" for i in range(6)] + ["broken", "gone", "loose"],
            "tar": ["00000.tar"] * 7 + [None, None],
            "key": [f"img{i}" for i in range(6)] + ["broken", None, None],
            "path": [None] * 7 + ["missing.jpg", "loose.png"],
        }
    )
    tar_rows, file_rows = (
        table.slice(0, 7).drop_columns(["path"]),
        table.slice(7).drop_columns(["tar", "key"]),
    )
    pq.write_table(tar_rows, tmp_path / "00000.parquet")
    pq.write_table(file_rows, tmp_path / "00001.parquet")
    return tmp_path


def _loader(manifest, seed: int, workers: int = 0):
    config = MultiCropConfig(global_size=56, local_size=28, n_local=2)
    augmentation = MultiCropAugmentation(config)
    dataset = ManifestImageDataset.from_manifests([manifest], augmentation.geometric)
    collate = MultiCropCollate((4, 4), photometric=augmentation.photometric)
    return DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed), shuffle=True)  # fmt: skip


def test_rows_from_tar_shards_and_files(manifest):
    dataset = ManifestImageDataset.from_manifests([manifest])
    assert len(dataset) == 9
    assert dataset[0].shape == (3, 80, 96) and dataset[0].min() >= 0 and dataset[0].max() <= 1
    assert dataset[8].shape == (3, 64, 64)


def test_bad_images_are_skipped_and_counted_never_fatal(manifest):
    batches = list(_loader(manifest, seed=0))
    assert sum(b["skipped"] for b in batches) == 2  # the broken bytes and the missing file
    assert sum(b["size"] for b in batches) == 7
    b = next(x for x in batches if x["size"] == 3)
    assert b["global_crops"].shape == (6, 3, 56, 56) and b["local_crops"].shape == (6, 3, 28, 28)
    assert b["masks"].shape == (6, 16) and b["masks"].any(1).sum() == 3


def test_same_seed_same_batches_across_workers(manifest):
    first = [b["global_crops"] for b in _loader(manifest, seed=3, workers=2) if b["size"]]
    again = [b["global_crops"] for b in _loader(manifest, seed=3, workers=2) if b["size"]]
    other = [b["global_crops"] for b in _loader(manifest, seed=4, workers=2) if b["size"]]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other, strict=False)
    )


def test_manifest_without_image_locations_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "url": ["http://x/a.jpg"]}), tmp_path / "00000.parquet")
    with pytest.raises(ManifestError, match="no image location; expected a 'path' column"):
        ManifestImageDataset.from_manifests([tmp_path])


def test_a_row_without_an_image_location_is_named(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "path": ["a.jpg", None], "tar": [None, "x.tar"],
                             "key": [None, None]}), tmp_path / "m.parquet")  # fmt: skip
    with pytest.raises(ManifestError, match=r"m.parquet: row 1 has no path, tar \+ key"):
        ManifestImageDataset.from_manifests([tmp_path / "m.parquet"])
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "path": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")  # fmt: skip
    with pytest.raises(ManifestError, match=r"empty.parquet'\]: no usable image rows"):
        ManifestImageDataset.from_manifests([tmp_path / "empty.parquet"])


def test_mixed_batches_come_whole_from_one_source_at_its_ratio_and_resume_exactly():
    from training.data.stream import MixedBatchSampler

    sizes, batch = [50, 12], 4
    sampler = MixedBatchSampler(sizes, [0.9, 0.1], batch, seed=3, world_size=2, rank=1)
    sampler.BLOCK = 256  # several blocks in the range below
    sources = []
    for b in range(3000):
        items = sampler.items(b)
        from_second = [index >= sizes[0] for index, _ in items]
        assert len(set(from_second)) == 1  # a batch is whole from one source
        sources.append(from_second[0])
    assert 0.08 <= sum(sources) / len(sources) <= 0.12
    second = [index for b in range(3000) if sources[b] for index, _ in sampler.items(b)]
    per_pass = 12 // (batch * 2)  # one batch per pass of the small source on this rank
    assert len(set(second[: per_pass * batch])) == batch  # no image twice within a pass
    resumed = MixedBatchSampler(sizes, [0.9, 0.1], batch, seed=3, world_size=2, rank=1,
                                start_batch=2500)  # fmt: skip
    resumed.BLOCK = 256
    assert next(iter(resumed)) == sampler.items(2500)
    other_rank = MixedBatchSampler(sizes, [0.9, 0.1], batch, seed=3, world_size=2, rank=0)
    other_rank.BLOCK = 256
    assert all((other_rank.items(b)[0][0] >= 50) == sources[b] for b in range(300))
    seeds = [seed for b in range(300) for _, seed in sampler.items(b)]
    assert len(set(seeds)) == len(seeds)  # every sample's augmentation is its own
