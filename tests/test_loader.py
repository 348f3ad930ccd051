import json
import pickle

import numpy as np
import pytest
import torch
from numpy.lib.format import open_memmap

from cxrlib import params
from cxrlib.errors import UserError
from cxrlib.training.loader import BatchTransform, CacheDataset, EpochSampler, make_loader


def tiny_cache(path, n=10, size=8):
    images = open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    images[:] = np.arange(n, dtype=np.uint8)[:, None, None] * 10 + np.arange(size, dtype=np.uint8)
    images.flush()
    return np.array(images)


def test_dataset_items_and_batches(tmp_path):
    pixels = tiny_cache(tmp_path / "images.npy")
    labels = np.array([[1, np.nan, 0], [0, 1, np.nan], [np.nan, np.nan, 1]], dtype=np.float32)
    ds = CacheDataset(tmp_path / "images.npy", rows=[7, 2, 5], labels=labels)
    assert len(ds) == 3
    image, target, mask, index = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8)
    assert torch.equal(image[0], torch.from_numpy(pixels[2]))
    assert target.dtype == torch.float32 and target.tolist() == [0, 1, 0]
    assert mask.dtype == torch.float32 and mask.tolist() == [1, 1, 0]
    assert index == 1
    images, targets, masks, indices = ds.__getitems__([2, 0])
    assert images.shape == (2, 1, 8, 8) and torch.equal(images[0, 0], torch.from_numpy(pixels[5]))
    assert targets.tolist() == [[0, 0, 1], [1, 0, 0]] and masks.tolist() == [[0, 0, 1], [1, 0, 1]]
    assert indices.dtype == torch.int64 and indices.tolist() == [2, 0]
    with pytest.raises(ValueError, match="labels"):
        CacheDataset(tmp_path / "images.npy", rows=[1, 2], labels=labels)


def test_dataset_pickles_the_path_not_the_pixels(tmp_path):
    tiny_cache(tmp_path / "images.npy", n=200, size=64)
    ds = CacheDataset(tmp_path / "images.npy", rows=np.arange(200), labels=np.zeros((200, 14)))
    ds[0]  # maps the file in this process
    assert ds._images is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._images is None and len(pickle.dumps(ds)) < 200 * 64 * 64 / 10
    assert torch.equal(clone[3][0], ds[3][0])


def test_loader_order_depends_only_on_seed_and_epoch(tmp_path):
    tiny_cache(tmp_path / "images.npy", n=40)
    ds = CacheDataset(tmp_path / "images.npy", rows=np.arange(40), labels=np.zeros((40, 2)))

    def order(seed, epoch, shuffle=True):
        loader = make_loader(ds, 8, shuffle, num_workers=0, seed=seed, epoch=epoch)
        return torch.cat([batch[3] for batch in loader]).tolist()

    assert order(1, 0) == order(1, 0)
    assert sorted(order(1, 0)) == list(range(40))
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert order(1, 3, shuffle=False) == list(range(40))
    loader = make_loader(ds, 8, True, num_workers=0, seed=1)
    loader.sampler.set_epoch(1)
    assert torch.cat([b[3] for b in loader]).tolist() == order(1, 1)
    state = torch.random.get_rng_state()
    list(make_loader(ds, 8, True, num_workers=0, seed=5))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_epoch_sampler_skips_batches_and_shards_for_ddp():
    full = list(EpochSampler(23, seed=3, epoch=2, batch_size=4))
    assert sorted(full) == list(range(23))
    rest = EpochSampler(23, seed=3, epoch=2, start_batch=2, batch_size=4)
    assert list(rest) == full[8:] and len(rest) == 15
    shards = [list(EpochSampler(23, seed=3, epoch=2, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [7, 7, 7]
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == 21 and set(flat) <= set(range(23))
    resumed = EpochSampler(23, seed=3, epoch=2, start_batch=1, batch_size=3, rank=1, world_size=3)
    assert list(resumed) == shards[1][3:] and len(resumed) == 4
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, rank=2, world_size=2)


def test_batch_transform_normalises_and_augments_deterministically():
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    plain = (images.float() / 255 - 0.5) / 0.25
    no_aug = BatchTransform(0.5, 0.25, augment=False)
    assert torch.allclose(no_aug(images), plain)
    assert torch.allclose(BatchTransform(0.5, 0.25)(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)),
                          torch.full((1, 1, 2, 2), 2.0))
    identity = BatchTransform(0.5, 0.25, augment=True, rotate=0, scale=0, translate=0, brightness=0, contrast=0)
    assert torch.allclose(identity(images, epoch=3, step=7), plain, atol=1e-5)
    aug = BatchTransform(0.5, 0.25, augment=True, seed=1)
    a, b = aug(images, epoch=0, step=5), aug(images, epoch=0, step=5)
    assert torch.equal(a, b) and not torch.allclose(a, plain)
    assert not torch.equal(a, aug(images, epoch=0, step=6)) and not torch.equal(a, aug(images, epoch=1, step=5))
    assert not torch.equal(a, BatchTransform(0.5, 0.25, augment=True, seed=1, rank=1)(images, 0, 5))
    aug.eval()
    assert torch.allclose(aug(images, epoch=0, step=5), plain)


def test_hflip_is_off_by_default_and_flips_whole_images():
    p = params.Params()
    assert p.hflip is False and BatchTransform.from_params(p).hflip is False
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    flip = BatchTransform(0.0, 1.0, augment=True, hflip=True, rotate=0, scale=0, translate=0, brightness=0,
                          contrast=0)
    out = flip(images, epoch=0, step=0)
    x = images.float() / 255
    flipped = [bool(torch.allclose(o, x[i].flip(-1), atol=1e-5)) for i, o in enumerate(out)]
    same = [bool(torch.allclose(o, x[i], atol=1e-5)) for i, o in enumerate(out)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)


def test_batch_transform_from_params_takes_cache_stats_for_null_mean_std():
    p = params.validate({"mean": None, "std": None, "augment": True, "aug_rotate": 5.0, "seed": 4})
    t = BatchTransform.from_params(p, stats={"mean": 0.3, "std": 0.2})
    assert (t.mean, t.std, t.augment, t.rotate, t.seed) == (0.3, 0.2, True, 5.0, 4)
    assert BatchTransform.from_params(params.Params()).mean == pytest.approx(0.4691)
    with pytest.raises(UserError, match="stats.json"):
        BatchTransform.from_params(p)


NOTEBOOK_CODE = """
import json, numpy as np, torch
from cxrlib.training.loader import CacheDataset, make_loader
ds = CacheDataset(images_path, rows=np.arange(24), labels=np.zeros((24, 3), np.float32))
loader = make_loader(ds, 5, True, num_workers=2, seed=0, epoch=1)
seen = torch.cat([batch[3] for batch in loader]).tolist()
pixels = [int(b[0][:, 0, 0, 0].sum()) for b in loader]
workers = len(loader._iterator._workers) if loader._iterator is not None else 0
open(out_path, "w").write(json.dumps({"seen": seen, "pixels": sum(pixels), "workers": workers}))
"""


@pytest.mark.slow
def test_loader_workers_run_inside_a_papermill_notebook(tmp_path):
    import nbformat
    import papermill

    pixels = tiny_cache(tmp_path / "images.npy", n=24)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("images_path = ''\nout_path = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(NOTEBOOK_CODE)]
    nbformat.write(nb, tmp_path / "loader.ipynb")
    papermill.execute_notebook(str(tmp_path / "loader.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               parameters={"images_path": str(tmp_path / "images.npy"),
                                           "out_path": str(tmp_path / "result.json")},
                               progress_bar=False, cwd=str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    expected = list(EpochSampler(24, seed=0, epoch=1))
    assert result["seen"] == expected and result["workers"] == 2
    assert result["pixels"] == int(pixels[:, 0, 0].sum())
