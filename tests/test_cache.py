import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlib.data.cache import build_cache, cli, cohort_with_rows, open_cache, usable_cohort
from cxrlib.data.cache_build import CACHE_VERSION
from cxrlib.data.decode import decode_image
from cxrlib.errors import UserError
from cxrlib.labels import FINDINGS

REAL_DECODE = decode_image


def write_jpeg(path, width=48, height=40, seed=0, quality=95):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = 60 + 2 * xx + yy + rng.integers(0, 40, size=(height, width))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=quality)


def make_cohort(root, n, start=0, splits=("train", "train", "test")):
    rows = []
    for i in range(start, start + n):
        subject, study = 10000000 + i, 50000000 + i
        dicom = f"{i:08x}-0000aaaa-1111bbbb-2222cccc-3333dddd"
        path = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        write_jpeg(root / path, seed=i)
        rows.append({"subject_id": subject, "study_id": study, "dicom_id": dicom, "view": "AP", "path": path,
                     "split": splits[i % len(splits)], **{f: float(i % 2) for f in FINDINGS}})
    return pd.DataFrame(rows)


def count_decodes(monkeypatch, fail_after=None):
    calls = []
    real = REAL_DECODE

    def counting(path, size, resize="squash", mode="fast", *reader):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        calls.append(os.path.basename(path))
        return real(path, size, resize, mode, *reader)

    monkeypatch.setattr("cxrlib.data.decode.decode_image", counting)
    return calls


def build(root, cohort, **kwargs):
    kwargs = {"size": 16, "workers": 1, "progress": False, **kwargs}
    return build_cache(root, cohort, **kwargs)


def test_draft_decodes_at_the_smallest_dct_scale_not_below_the_target(tmp_path):
    write_jpeg(tmp_path / "a.jpg", width=800, height=640)
    cases = [(64, (100, 80)), (100, (200, 160)), (160, (200, 160)), (161, (400, 320)), (320, (400, 320)),
             (321, (800, 640))]
    for target, expected in cases:
        with Image.open(tmp_path / "a.jpg") as img:
            img.draft("L", (target, target))
            assert img.size == expected
            assert min(img.size) >= target  # never below the target, but one more halving would be
            assert expected == (800, 640) or min(img.size) // 2 < target
    pixels, source = decode_image(tmp_path / "a.jpg", 100)
    assert pixels.shape == (100, 100) and pixels.dtype == np.uint8 and source == (800, 640)
    # Close to a full decode + bilinear resize (the original project's path).
    with Image.open(tmp_path / "a.jpg") as img:
        reference = np.asarray(img.convert("L").resize((100, 100), Image.Resampling.BILINEAR), dtype=float)
    assert np.abs(pixels - reference).mean() < 3.0


def test_squash_fills_the_square_and_letterbox_pads_with_zeros(tmp_path):
    Image.new("L", (64, 32), 200).save(tmp_path / "wide.jpg", quality=95)
    squash, _ = decode_image(tmp_path / "wide.jpg", 32, "squash")
    assert squash.shape == (32, 32) and np.abs(squash.astype(int) - 200).max() <= 2
    letter, _ = decode_image(tmp_path / "wide.jpg", 32, "letterbox")
    assert letter.shape == (32, 32)
    assert (letter[:8] == 0).all() and (letter[24:] == 0).all()
    assert np.abs(letter[9:23].astype(int) - 200).max() <= 2
    Image.new("L", (20, 40), 100).save(tmp_path / "tall.jpg", quality=95)
    tall, _ = decode_image(tmp_path / "tall.jpg", 32, "letterbox")
    assert (tall[:, :8] == 0).all() and (tall[:, 24:] == 0).all() and (tall[:, 9:23] > 90).all()


def test_build_writes_images_index_manifest_and_stats(tmp_path):
    cohort = make_cohort(tmp_path, 6)
    cache = build(tmp_path, cohort)
    folder = tmp_path / "cache" / "16_squash"
    assert cache.dir == folder
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "images.npy", "index.csv", "manifest.json", "report.csv", "stats.json"]
    assert not (folder / ".building").exists()
    images = np.load(folder / "images.npy", mmap_mode="r")
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert images.shape == (6, 16, 16) and images.dtype == np.uint8
    assert list(cache.index.columns) == ["dicom_id", "row", "path", "split", "width", "height"]
    assert list(cache.index["dicom_id"]) == sorted(cohort["dicom_id"])
    assert (cache.index["width"] == 48).all() and (cache.index["height"] == 40).all()
    for dicom_id, path in zip(cohort["dicom_id"], cohort["path"]):
        row = cache.rows_for([dicom_id])[0]
        expected, _ = decode_image(tmp_path / path, 16)
        np.testing.assert_array_equal(cache.images[row], expected)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["size"] == 16 and manifest["resize"] == "squash"
    assert manifest["cache_version"] == CACHE_VERSION and manifest["created"]
    sources = pd.DataFrame(manifest["sources"]).set_index("dicom_id")
    first = cohort.iloc[0]
    stat = os.stat(tmp_path / first["path"])
    assert sources.loc[first["dicom_id"], "bytes"] == stat.st_size
    assert sources.loc[first["dicom_id"], "mtime_ns"] == stat.st_mtime_ns
    train_rows = cache.rows_for(cohort.loc[cohort["split"] == "train", "dicom_id"])
    pixels = cache.images[np.sort(train_rows)].astype(np.float64) / 255
    assert cache.stats["mean"] == pytest.approx(pixels.mean(), abs=1e-9)
    assert cache.stats["std"] == pytest.approx(pixels.std(), abs=1e-9)
    assert cache.stats["images"] == 4
    assert cache.counts == {"decoded": 6, "reused": 0, "failed": 0}
    assert cache.rows_for(["not-there"]).tolist() == [-1]


@pytest.mark.probe(issue=15, kind="silent")
def test_bad_images_are_reported_and_left_out(tmp_path):
    cohort = make_cohort(tmp_path, 6)
    Image.fromarray(np.full((40, 48), 128, np.uint8)).save(tmp_path / cohort.loc[5, "path"], format="PNG")
    truncated = tmp_path / cohort.loc[1, "path"]
    write_jpeg(truncated, width=300, height=200, seed=9)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (tmp_path / cohort.loc[2, "path"]).write_bytes(b"this is not a jpeg at all" * 10)
    (tmp_path / cohort.loc[3, "path"]).unlink()
    with pytest.warns(UserWarning, match="4 of 6 images could not be decoded"):
        cache = build(tmp_path, cohort)
    reasons = dict(zip(cache.failures["dicom_id"], cache.failures["reason"]))
    assert reasons[cohort.loc[1, "dicom_id"]] == "truncated JPEG"
    assert reasons[cohort.loc[2, "dicom_id"]].startswith("cannot identify image")
    assert reasons[cohort.loc[3, "dicom_id"]] == "missing file"
    assert reasons[cohort.loc[5, "dicom_id"]] == "not a JPEG (PNG data)"   # a PNG renamed .jpg
    assert len(cache) == 2 and list(cache.failures.columns) == ["dicom_id", "path", "reason"]
    report = pd.read_csv(cache.dir / "report.csv")
    assert len(report) == 4
    with pytest.warns(UserWarning, match="4 of 6 cohort images"):
        kept = cohort_with_rows(cohort, cache)
    assert list(kept["dicom_id"]) == list(cohort.loc[[0, 4], "dicom_id"])
    assert (kept["cache_row"] >= 0).all() and list(kept.columns) == [*cohort.columns, "cache_row"]
    # Unchanged bad files are not retried; a repaired one is.
    write_jpeg(tmp_path / cohort.loc[3, "path"], seed=3)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calls = count_decodes(mp)
        again = build(tmp_path, cohort)
    assert len(calls) == 1 and len(again) == 3 and again.counts["failed"] == 3


def test_interrupted_build_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    cohort = make_cohort(tmp_path, 12)
    calls = count_decodes(monkeypatch, fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, cohort, flush_every=3)
    assert len(calls) == 7
    folder = tmp_path / "cache" / "16_squash"
    assert not (folder / "manifest.json").exists() and not (folder / "images.npy").exists()
    with pytest.raises(UserError, match="interrupted build"):
        open_cache(tmp_path / "cache", 16, "squash")
    calls = count_decodes(monkeypatch)
    resumed = build(tmp_path, cohort)
    assert len(calls) == 5  # the 7 done before the interrupt are kept
    fresh = build(tmp_path, cohort, cache_dir=tmp_path / "fresh")
    np.testing.assert_array_equal(resumed.images, fresh.images)
    pd.testing.assert_frame_equal(resumed.index, fresh.index)
    assert resumed.stats == fresh.stats


def test_incremental_build_decodes_only_new_or_changed_images(tmp_path, monkeypatch):
    cohort = make_cohort(tmp_path, 6)
    first = build(tmp_path, cohort)
    before = {d: np.array(first.images[r]) for d, r in zip(first.index["dicom_id"], first.index["row"])}
    calls = count_decodes(monkeypatch)
    same = build(tmp_path, cohort)
    assert calls == [] and same.counts["decoded"] == 0
    bigger = pd.concat([cohort, make_cohort(tmp_path, 2, start=6)], ignore_index=True)
    grown = build(tmp_path, bigger)
    assert len(calls) == 2 and grown.counts == {"decoded": 2, "reused": 6, "failed": 0}
    for dicom_id, pixels in before.items():
        np.testing.assert_array_equal(grown.images[grown.rows_for([dicom_id])[0]], pixels)
    changed = tmp_path / bigger.loc[0, "path"]
    write_jpeg(changed, seed=99)
    os.utime(changed, ns=(1, 1))
    calls.clear()
    build(tmp_path, bigger)
    assert calls == [changed.name]
    # New splits alone change the index and the statistics, not the pixels.
    resplit = bigger.assign(split="train")
    calls.clear()
    all_train = build(tmp_path, resplit)
    assert calls == [] and all_train.stats["images"] == 8 and set(all_train.index["split"]) == {"train"}


def test_an_interrupted_rebuild_leaves_the_previous_cache_whole(tmp_path, monkeypatch):
    cohort = make_cohort(tmp_path, 4)
    old = build(tmp_path, cohort)
    old_pixels = np.array(old.images)
    bigger = pd.concat([cohort, make_cohort(tmp_path, 3, start=4)], ignore_index=True)
    count_decodes(monkeypatch, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, bigger)
    still = open_cache(tmp_path / "cache", 16, "squash")
    assert len(still) == 4
    np.testing.assert_array_equal(still.images, old_pixels)
    calls = count_decodes(monkeypatch)
    grown = build(tmp_path, bigger)
    assert len(calls) == 2 and len(grown) == 7  # one new image was done before the interrupt, 4 are reused


KILLED_BUILD = """
import os, signal, sys
import pandas as pd
from cxrlib.data import cache, decode
real, calls = decode.decode_image, []
def dying(*args):
    if len(calls) == 7:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no last checkpoint
    calls.append(1)
    return real(*args)
decode.decode_image = dying
cache.build_cache(sys.argv[1], pd.read_csv(sys.argv[2]), size=16, workers=1, progress=False, flush_every=3)
"""


def test_a_killed_build_loses_at_most_the_work_since_its_last_checkpoint(tmp_path, monkeypatch):
    import subprocess
    import sys

    cohort = make_cohort(tmp_path, 10)
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    run = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(tmp_path), str(tmp_path / "cohort.csv")],
                         capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    calls = count_decodes(monkeypatch)
    cache = build(tmp_path, cohort)
    assert len(calls) == 4  # checkpoints after 3 and 6 images: 6 kept, the 7th was lost
    fresh = build(tmp_path, cohort, cache_dir=tmp_path / "fresh")
    np.testing.assert_array_equal(cache.images, fresh.images)


def test_process_pool_gives_the_same_cache_as_one_process(tmp_path):
    cohort = make_cohort(tmp_path, 9)
    serial = build(tmp_path, cohort, size=20, resize="letterbox")
    parallel = build(tmp_path, cohort, size=20, resize="letterbox", workers=2, cache_dir=tmp_path / "pool")
    np.testing.assert_array_equal(serial.images, parallel.images)
    assert serial.dir.name == "20_letterbox"


def test_user_mistakes_are_explained(tmp_path):
    cohort = make_cohort(tmp_path, 2)
    with pytest.raises(UserError, match="resize"):
        build(tmp_path, cohort, resize="stretch")
    with pytest.raises(UserError, match="data_root"):
        build(tmp_path / "nowhere", cohort)
    with pytest.raises(UserError, match="lacks column"):
        build(tmp_path, cohort.drop(columns="path"))
    with pytest.raises(UserError, match="no complete image cache"):
        open_cache(tmp_path / "cache", 64, "squash")
    with pytest.raises(UserError, match="none of the 2 cohort images could be decoded"):
        build(tmp_path / "files", cohort)  # a data_root one level too deep: every file is missing
    assert len(pd.read_csv(tmp_path / "files" / "cache" / "16_squash" / "report.csv")) == 2


def test_a_second_build_of_one_cache_waits_for_the_first(tmp_path):
    import fcntl

    cohort = make_cohort(tmp_path, 2)
    folder = tmp_path / "cache" / "16_squash"
    folder.mkdir(parents=True)
    import threading
    import time

    held = open(folder / ".lock", "a")
    fcntl.flock(held, fcntl.LOCK_EX)  # another open file description: flock sees a second builder
    result = {}
    waiter = threading.Thread(target=lambda: result.update(cache=build(tmp_path, cohort)))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive() and "cache" not in result     # waits while the other build holds the lock
    held.close()                                           # the other build ends
    waiter.join(timeout=60)
    assert len(result["cache"]) == 2 and result["cache"].counts["decoded"] == 2


def test_cli_builds_and_reports(tmp_path, capsys):
    cohort = make_cohort(tmp_path, 3)
    (tmp_path / cohort.loc[0, "path"]).unlink()
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    code = cli("cache", ["--data-root", str(tmp_path), "--cohort", str(tmp_path / "cohort.csv"),
                                   "--size", "16", "--workers", "1", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0 and "2 images (3 files decoded now, 0 reused)" in out
    assert "1 image(s) could not be decoded" in err
    with pytest.raises(UserError, match="none.csv: no cohort table"):
        cli("cache", ["--data-root", str(tmp_path), "--cohort", str(tmp_path / "none.csv")])


def test_exact_decode_is_the_original_path_pixel_for_pixel_and_has_its_own_cache(tmp_path):
    from torchvision import transforms

    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(128, 60, (300, 260)), 0, 255).astype(np.uint8)
    pixels[100:140, 60:200] = 255                         # sharp edges, where draft mode differs most
    path = tmp_path / "files" / "a.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(path, quality=95)
    with Image.open(path) as img:
        original = np.asarray(transforms.Resize((64, 64))(img.convert("L")))
    exact, _ = decode_image(path, 64, "squash", "exact")
    fast, _ = decode_image(path, 64, "squash", "fast")
    assert np.array_equal(exact, original)
    assert not np.array_equal(fast, original)
    cohort = pd.DataFrame({"dicom_id": ["a"], "path": ["files/a.jpg"], "split": ["train"]})
    built = build_cache(tmp_path, cohort, size=64, workers=1, progress=False, decode="exact")
    assert built.dir.name == "64_squash_exact" and built.decode == "exact"
    assert np.array_equal(built.images[0], original)
    assert build_cache(tmp_path, cohort, size=64, workers=1, progress=False).dir.name == "64_squash"
    with pytest.raises(UserError, match="decode 'slow'"):
        build_cache(tmp_path, cohort, size=64, workers=1, progress=False, decode="slow")


def _build_in_process(root, cohort_csv, out_json):
    from cxrlib.data.cohort import read_cohort

    cohort = read_cohort(cohort_csv)
    cache = build_cache(root, cohort, size=16, workers=1, progress=False)
    rows = cache.rows_for(cohort["dicom_id"])
    Path(out_json).write_text(json.dumps({"rows": rows.tolist(), "stats": cache.stats}))


@pytest.mark.probe(issue=15, kind="silent")
def test_two_cohorts_built_at_once_share_the_cache_without_evicting_each_other(tmp_path):
    """Two runs with different cohorts (AP only; AP and PA) build one shared cache at the same time: each
    ends with every one of its images, at rows that later builds never move, and its own statistics."""
    import multiprocessing

    from cxrlib.data.cohort import write_cohort

    first = make_cohort(tmp_path, 8)
    second = pd.concat([first.iloc[::2], make_cohort(tmp_path, 6, start=8)], ignore_index=True)
    jobs = []
    for name, cohort in (("a", first), ("b", second)):
        write_cohort(cohort, tmp_path / f"{name}.csv")
        jobs.append(multiprocessing.get_context("spawn").Process(
            target=_build_in_process, args=(tmp_path, tmp_path / f"{name}.csv", tmp_path / f"{name}.json")))
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
        assert job.exitcode == 0
    final = open_cache(tmp_path / "cache", 16, "squash")
    alone = build_cache(tmp_path / "solo", make_cohort(tmp_path / "solo", 14), size=16, workers=1, progress=False)
    for name, cohort in (("a", first), ("b", second)):
        seen = json.loads((tmp_path / f"{name}.json").read_text())
        assert min(seen["rows"]) >= 0                                          # every image was there
        assert seen["rows"] == final.rows_for(cohort["dicom_id"]).tolist()     # at rows that did not move
        for dicom_id, row in zip(cohort["dicom_id"], seen["rows"]):
            np.testing.assert_array_equal(final.images[row], alone.images[alone.rows_for([dicom_id])[0]])
        train = cohort[cohort["split"] == "train"]
        assert seen["stats"]["images"] == len(train)                           # its own training images
    assert len(final) == 14 and cohort_with_rows(second, final).shape[0] == len(second)


@pytest.mark.probe(issue=15, kind="silent")
def test_a_runs_usable_cohort_leaves_out_the_images_that_failed(tmp_path):
    from cxrlib import params
    from cxrlib.data.cohort import write_cohort

    cohort = make_cohort(tmp_path, 5)
    (tmp_path / cohort.loc[2, "path"]).write_bytes(b"garbage" * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build(tmp_path, cohort, size=32)
    write_cohort(cohort, tmp_path / "run" / "cohort.csv")
    p = params.validate({"data_root": str(tmp_path), "image_size": 32, "head": "avgpool"})
    usable = usable_cohort(tmp_path / "run", p)
    assert list(usable["dicom_id"]) == list(cohort.drop(index=2)["dicom_id"])   # what notebook 02 counts


@pytest.mark.probe(issue=22, kind="silent")
def test_a_16_bit_png_is_scaled_by_its_declared_bits_and_a_huge_one_in_bounded_memory(tmp_path):
    """A 12-bit scan stored in a 16-bit PNG would come out near-black at 255/65535; declared 12-bit it is scaled
    by 255/4095. A 16-bit PNG many times the target size is block-averaged a band at a time before any float copy."""
    import tracemalloc
    import warnings

    from cxrlib.data.decode import decode_image

    ramp = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (256, 1))
    Image.fromarray(ramp).save(tmp_path / "twelve.png")   # PIL writes mode I;16
    pixels, _ = decode_image(tmp_path / "twelve.png", 256, formats=("PNG",), bits=12)
    assert pixels.max() == 255 and abs(int(pixels[0, 128]) - 128) <= 2
    full = np.tile(np.linspace(0, 65535, 4000).astype(np.uint16), (4000, 1))
    Image.fromarray(full).save(tmp_path / "huge.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a full 16-bit range: no note
        tracemalloc.start()
        big, source = decode_image(tmp_path / "huge.png", 64, formats=("PNG",), bits=16)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert source == (4000, 4000) and big.shape == (64, 64)
    assert abs(int(big[0, 32]) - 128) <= 3 and big[0, -1] >= 250
    assert peak < 40e6   # a float64 copy of the image alone would be 128 MB
