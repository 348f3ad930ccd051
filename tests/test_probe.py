"""The careless-user probe, part three (issue 32): bad inputs and faults a user really meets, each with what it
must give: one line naming the file and the fix, before any work where it can be checked; never a traceback, a
silent wrong result or lost data.

Every case of the three probes (issues 15, 22 and 32) is marked @pytest.mark.probe(issue=N, kind=K), K being
what the case once gave (silent, traceback, loss, writers, late). Those kept beside the code they test are in
test_locks, test_external, test_cache, test_ux, test_handoff, test_sweep, test_faults and others. `make probe`
runs all of them and ends with one line counting, per kind, the cases that still give it (tests/conftest.py)."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from cxrlib import params
from cxrlib.errors import UserError
from cxrlib.training import contamination, model

pytestmark = pytest.mark.usefixtures("one_thread")


def checked(tmp_path, weights, arch="resnet18", **extra):
    """make run's check before notebook 01, on these weights."""
    p = params.validate({"arch": arch, "head": "avgpool", "weights": str(weights), "image_size": 56, **extra})
    model.check_model(p)


def resnet18_file(tmp_path, name="r18.pth"):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / name)
    return tmp_path / name


def dinov2_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, image_size=28,
                                       patch_size=14)
    transformers.Dinov2Model(config).save_pretrained(tmp_path / "dino")
    return tmp_path / "dino"


# --------------------------------------------------------------------------- bad weight files, before notebook 01
@pytest.mark.probe(issue=32, kind="late")
def test_a_truncated_file_is_one_line(tmp_path):
    whole = resnet18_file(tmp_path).read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"weights: .*cut.pth is not a readable PyTorch file"):
        checked(tmp_path, tmp_path / "cut.pth")


@pytest.mark.probe(issue=32, kind="late")
def test_an_empty_file_is_one_line(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.pt is not a readable PyTorch file"):
        checked(tmp_path, tmp_path / "empty.pt")


@pytest.mark.probe(issue=32, kind="late")
def test_a_pickled_module_is_refused_with_the_command_that_converts_it(tmp_path):
    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pt")
    with pytest.raises(UserError, match="whole pickled module .*convert-weights"):
        checked(tmp_path, tmp_path / "whole.pt")


@pytest.mark.probe(issue=32, kind="late")
def test_another_architecture_is_refused_with_its_keys(tmp_path):
    with pytest.raises(UserError, match=r"does not fit this arch\. Missing \(\d+\)"):
        checked(tmp_path, resnet18_file(tmp_path), arch="densenet121")


@pytest.mark.probe(issue=32, kind="late")
def test_junk_safetensors_is_one_line(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="junk.safetensors is not a readable safetensors file"):
        checked(tmp_path, tmp_path / "junk.safetensors")


@pytest.mark.probe(issue=32, kind="late")
def test_a_dinov2_folder_of_the_wrong_tensors_is_one_line(tmp_path):
    folder = dinov2_folder(tmp_path)
    from safetensors.torch import save_file

    save_file(torchvision.models.resnet18().state_dict(), str(folder / "model.safetensors"))   # another model's
    with pytest.raises(UserError, match="does not hold a DINOv2's tensors"):
        checked(tmp_path, folder, arch="timm:vit_small_patch14_dinov2")


@pytest.mark.probe(issue=32, kind="traceback")
def test_a_huggingface_config_that_is_not_json_or_lacks_its_shape_is_one_line(tmp_path):
    folder = dinov2_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "hidden_size"}))
    with pytest.raises(UserError, match="config.json lacks a DINOv2 config's 'hidden_size'"):
        checked(tmp_path, folder, arch="timm:vit_small_patch14_dinov2")
    (folder / "config.json").write_text("{half")
    with pytest.raises(UserError, match="config.json is not readable JSON"):
        checked(tmp_path, folder, arch="timm:vit_small_patch14_dinov2")


@pytest.mark.probe(issue=32, kind="silent")
def test_integer_and_bool_tensors_are_refused_not_cast(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].to(torch.int8)
    state["bn1.weight"] = state["bn1.weight"] > 0
    torch.save(state, tmp_path / "ints.pth")
    with pytest.raises(UserError, match=r"Other type \(2\): bn1.weight torch.bool vs torch.float32, "
                                        r"layer1.0.conv1.weight torch.int8 vs torch.float32"):
        checked(tmp_path, tmp_path / "ints.pth")


# --------------------------------------------------------------------------- the weights' JSON
@pytest.mark.probe(issue=32, kind="silent")
def test_a_json_naming_another_files_hash_is_refused(tmp_path):
    path = resnet18_file(tmp_path)
    (tmp_path / "r18.pth.json").write_text(json.dumps({"source": "chexpert-clean", "mimic": "none",
                                                       "sha256": "0" * 64}))   # a conversion of another file
    with pytest.raises(UserError, match="r18.pth.json describes another file .*Convert again"):
        checked(tmp_path, path)


def test_a_json_naming_another_architectures_source_is_refused(tmp_path):
    """Issue 33: a JSON naming a DenseNet source was accepted on a ResNet file without a word."""
    path = resnet18_file(tmp_path)
    (tmp_path / "r18.pth.json").write_text(json.dumps({"source": "torchxrayvision:densenet121-res224-all"}))
    with pytest.raises(UserError, match="its source is 'torchxrayvision:densenet121-res224-all', a densenet, but arch "
                                        "is resnet18"):
        checked(tmp_path, path)
    (tmp_path / "r18.pth.json").write_text(json.dumps({"source": "torchxrayvision:resnet50-res512-all"}))
    checked(tmp_path, path)   # the same family: the keys decide the rest


@pytest.mark.probe(issue=32, kind="silent")
def test_the_json_cannot_speak_for_the_files_own_hash_or_layout(tmp_path):
    from cxrlib.fsutil import sha256_file

    path = resnet18_file(tmp_path)
    (tmp_path / "r18.pth.json").write_text(json.dumps({"source": "x", "mimic": "none", "layout": "safetensors",
                                                       "file": "/elsewhere.pt"}))
    record = model.starting_info("resnet18", str(path))
    assert (record["sha256"], record["layout"], record["file"]) == (sha256_file(path), "state_dict", str(path))


@pytest.mark.probe(issue=32, kind="traceback")
def test_a_non_numeric_std_is_one_line(tmp_path):
    path = resnet18_file(tmp_path)
    (tmp_path / "r18.pth.json").write_text(json.dumps({"input": {"mean": 0.5, "std": "wide"}}))
    with pytest.raises(UserError, match=r"r18.pth.json: 'input' should be .*numbers.*not \{'mean': 0.5, 'std': 'wide'\}"):
        checked(tmp_path, path)


# --------------------------------------------------------------------------- a training-image manifest
def cohort() -> pd.DataFrame:
    return pd.DataFrame({"dicom_id": [f"d{i}" for i in range(45)], "subject_id": [str(10000000 + i) for i in range(45)],
                         "split": ["test"] * 15 + ["train"] * 30})


@pytest.mark.parametrize("manifest, told", [
    ("dicom_id,subject_id\n", "is empty"),                                          # a header alone
    ("dicom_id\nx1\nx2\nx3\n", "lists 3 images, none of them an image or patient of this cohort"),   # another scheme
])
@pytest.mark.probe(issue=32, kind="silent")
def test_a_manifest_that_names_nothing_of_the_cohort_is_unknown_not_clean(tmp_path, manifest, told):
    (tmp_path / "list.csv").write_text(manifest)
    p = params.validate({"weights": "none", "weights_manifest": str(tmp_path / "list.csv")})
    check = contamination.starting_weights({"source": "microsoft/rad-dino"}, p, cohort())["contamination"]
    assert check["status"] == "unknown" and told in check["message"], check
    (tmp_path / "list.csv").write_text("dicom_id\nd20\nd21\n")   # two training images of the cohort: counted, clean
    check = contamination.starting_weights({"source": "microsoft/rad-dino"}, p, cohort())["contamination"]
    assert check["status"] == "clean" and check["seen_images"] == 0


# --------------------------------------------------------------------------- external source tables
def stand_in_table(tmp_path, source: str, images: int = 200):
    """A source's stand-in folder and its table (path, frame) to corrupt the way a user's copy may be."""
    from cxrlib.synthetic import external_standins as stand_in

    root = tmp_path / source
    stand_in.generate(root, source, images=images, seed=5, shift="none")
    table = {"nih": "Data_Entry_2017_v2020.csv", "chexpert": "valid.csv", "vindr": "annotations/image_labels_test.csv",
             "padchest": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"}[source]
    return root, root / table, pd.read_csv(root / table, dtype=str, keep_default_na=False)


def read(source, root, subset=None):
    from cxrlib.data import sources

    return sources.read_source(source, root, subset)


@pytest.mark.probe(issue=32, kind="silent")
def test_a_label_spelt_another_way_is_refused_not_read_as_negative(tmp_path):
    root, path, frame = stand_in_table(tmp_path, "nih")
    effusion = frame["Finding Labels"].str.contains("Effusion")
    assert effusion.sum() > 5
    frame["Finding Labels"] = frame["Finding Labels"].str.replace("Effusion", "Pleural Effusion")
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match=r"rows' Finding Labels hold values this reader does not know \('pleural "
                                        r"effusion' \(\d+\)\)"):
        read("nih", root, "all")


@pytest.mark.probe(issue=32, kind="silent")
def test_one_unknown_label_among_many_rows_is_counted_named_and_missing(tmp_path):
    root, path, frame = stand_in_table(tmp_path, "nih", images=200)
    # over 1,000 rows, so that one cell is below the refusal threshold; the table is read, not the images
    frame = pd.concat([frame.assign(**{"Image Index": f"{copy}-" + frame["Image Index"]}) for copy in range(6)],
                      ignore_index=True)
    frame.loc[0, "Finding Labels"] = "Cardiomegally"
    frame.to_csv(path, index=False)
    found = read("nih", root, "all")
    assert "1 rows' Finding Labels not recognised ('cardiomegally' (1)): read as missing (every finding of the row)" \
        in found.notes
    row = found.table.set_index("image_id").loc[frame.loc[0, "Image Index"]]
    assert row[list(found.table.columns[-14:])].isna().all()


@pytest.mark.probe(issue=32, kind="silent")
def test_chexpert_cells_outside_1_0_minus_1_blank_are_refused(tmp_path):
    root, path, frame = stand_in_table(tmp_path, "chexpert")
    frame.loc[frame["Cardiomegaly"] == "1.0", "Cardiomegaly"] = "yes"
    frame.loc[frame.index[:3], "Edema"] = "2"
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match=r"label cells \(1, 0, -1 or blank\) hold values .*'yes'"):
        read("chexpert", root, "valid")


@pytest.mark.probe(issue=32, kind="silent")
def test_vindr_cells_yes_no_are_refused_not_read_as_absent(tmp_path):
    root, path, frame = stand_in_table(tmp_path, "vindr")
    frame["Cardiomegaly"] = frame["Cardiomegaly"].map({"1": "yes", "0": "no"}).fillna(frame["Cardiomegaly"])
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match=r"label cells \(0, 1 or blank\) hold values .*'no'"):
        read("vindr", root, "test")


@pytest.mark.probe(issue=32, kind="silent")
def test_a_header_only_table_is_refused(tmp_path):
    root, path, frame = stand_in_table(tmp_path, "nih")
    frame.head(0).to_csv(path, index=False)
    with pytest.raises(UserError, match="its table has no rows"):
        read("nih", root, "all")


@pytest.mark.probe(issue=32, kind="silent")
def test_repeated_rows_are_dropped_with_a_count_and_conflicting_ones_refused(tmp_path):
    root, path, frame = stand_in_table(tmp_path, "nih")
    pd.concat([frame, frame.head(3)]).to_csv(path, index=False)
    found = read("nih", root, "all")
    assert len(found.table) == len(frame) and "3 repeated rows of the same image (identical labels) dropped" in found.notes
    other = frame.head(1).assign(**{"Finding Labels": "Hernia"})
    pd.concat([frame, other]).to_csv(path, index=False)
    with pytest.raises(UserError, match=f"image '{frame.loc[0, 'Image Index']}' has rows with different labels"):
        read("nih", root, "all")


@pytest.mark.parametrize("source, column, escape", [
    ("chexpert", "Path", "/etc/passwd"),
    ("padchest", "ImageID", "../../../outside/x.png"),
])
@pytest.mark.probe(issue=32, kind="silent")
def test_a_path_that_leaves_the_data_root_is_refused_with_its_row(tmp_path, source, column, escape):
    root, path, frame = stand_in_table(tmp_path, source)
    frame.loc[0, column] = escape
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match=r"1 image path\(s\) leave the data root .*relative to its folder"):
        read(source, root, "valid" if source == "chexpert" else "all")


@pytest.mark.probe(issue=32, kind="silent")
def test_a_misspelt_or_repeated_map_label_is_refused_when_the_map_loads(tmp_path):
    from cxrlib.data import labelmap

    text = (labelmap.MAPS_DIR / "nih.yaml").read_text()
    (tmp_path / "nih.yaml").write_text(text.replace("Pleural Effusion: [Effusion]", "Pleural Effusion: [Efusion]"))
    with pytest.raises(UserError, match=r"label\(s\) \['Efusion'\] are not in its vocabulary"):
        labelmap.load("nih", tmp_path / "nih.yaml")
    (tmp_path / "nih.yaml").write_text(text + "  Pneumothorax: [Effusion]\n")   # a finding written twice
    with pytest.raises(UserError, match="the key 'Pneumothorax' is written twice"):
        labelmap.load("nih", tmp_path / "nih.yaml")


@pytest.mark.probe(issue=32, kind="traceback")
def test_external_table_out_must_be_a_regular_file_or_new(tmp_path):
    from cxrlib.data import sources

    root, _, _ = stand_in_table(tmp_path, "nih", images=20)
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    for out in ("folder.csv", "link.csv"):
        with pytest.raises(UserError, match=f"--out {tmp_path / out}: not a regular file"):
            sources.cli("external-table", ["--source", "nih", "--data-root", str(root), "--subset", "all",
                                           "--out", str(tmp_path / out)])
    assert not (tmp_path / "elsewhere.csv").exists()


@pytest.mark.probe(issue=32, kind="silent")
def test_a_string_equalize_is_refused_not_truthy(tmp_path):
    from cxrlib.evaluation import external_validation

    with pytest.raises(UserError, match="equalize = 'no': write True or False"):
        external_validation.score_source(tmp_path, None, "nih", tmp_path, equalize="no")


@pytest.mark.probe(issue=32, kind="traceback")
def test_a_full_disk_while_external_table_writes_is_one_line(tmp_path, monkeypatch):
    import errno

    from cxrlib.data import sources

    root, _, _ = stand_in_table(tmp_path, "nih", images=20)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(sources, "atomic_write_csv", full)
    with pytest.raises(UserError, match=r"--out .*table.csv: could not be written \(No space left on device\)"):
        sources.cli("external-table", ["--source", "nih", "--data-root", str(root), "--subset", "all",
                                       "--out", str(tmp_path / "table.csv")])


# --------------------------------------------------------------------------- pixels
@pytest.mark.probe(issue=32, kind="silent")
def test_values_above_the_declared_depth_are_a_named_failure_not_clipped(tmp_path):
    from PIL import Image

    from cxrlib.data.cache import build_cache
    from cxrlib.data.decode import BeyondDepth, decode_image

    full = (np.arange(64 * 64, dtype=np.uint32) * 16).reshape(64, 64).astype(np.uint16)   # 0..65520
    Image.fromarray(full).save(tmp_path / "full.png")
    with pytest.raises(BeyondDepth, match="values up to .* declares 12-bit"):
        decode_image(tmp_path / "full.png", 16, formats=("PNG",), bits=12)
    cohort = pd.DataFrame({"dicom_id": ["a"], "subject_id": ["1"], "study_id": ["1"], "split": ["external"],
                           "path": ["full.png"], "bits": [12]})
    with pytest.raises(UserError, match="none of the 1 cohort images could be decoded"):
        build_cache(tmp_path, cohort, size=16, cache_dir=tmp_path / "cache", workers=1, progress=False,
                    reader={"formats": ["PNG"], "equalize": False})
    report = pd.read_csv(next((tmp_path / "cache").rglob("report.csv")))
    assert "declares 12-bit" in report["reason"].iloc[0]


@pytest.mark.probe(issue=32, kind="silent")
def test_a_changed_bit_depth_decodes_again_instead_of_reusing_stale_pixels(tmp_path):
    from PIL import Image

    from cxrlib.data.cache import build_cache

    Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(tmp_path / "x.png")
    cohort = pd.DataFrame({"dicom_id": ["a"], "subject_id": ["1"], "study_id": ["1"], "split": ["external"],
                           "path": ["x.png"], "bits": [12]})
    args = dict(size=16, cache_dir=tmp_path / "cache", workers=1, progress=False,
                reader={"formats": ["PNG"], "equalize": False})
    twelve = np.asarray(build_cache(tmp_path, cohort, **args).images[0]).max()
    ten = np.asarray(build_cache(tmp_path, cohort.assign(bits=10), **args).images[0]).max()
    assert (twelve, ten) == (round(1000 * 255 / 4095), round(1000 * 255 / 1023))


@pytest.mark.probe(issue=32, kind="silent")
def test_a_16_bit_image_without_a_declared_depth_is_a_named_failure_not_scaled_by_its_own_range(tmp_path):
    """Once a 16-bit image with no declared depth was scaled by its own maximum: a dark one of a set came out
    four times brighter than its neighbours. The depth is the source's decision (external_selection.BIT_DEPTH, predict's
    --bits), recorded; a file that nothing describes is listed with what would hold it."""
    from PIL import Image

    from cxrlib.__main__ import main
    from cxrlib.data.cache import build_cache
    from cxrlib.data.external_selection import BIT_DEPTH, FORMATS
    from cxrlib.data.sources import SOURCES
    from cxrlib.handoff.predict import decoded

    Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(tmp_path / "x.png")
    cohort = pd.DataFrame({"dicom_id": ["a"], "subject_id": ["1"], "study_id": ["1"], "split": ["external"],
                           "path": ["x.png"], "bits": [0]})
    with pytest.raises(UserError, match="none of the 1 cohort images could be decoded"):
        build_cache(tmp_path, cohort, size=16, cache_dir=tmp_path / "cache", workers=1, progress=False,
                    reader={"formats": ["PNG"], "equalize": False})
    report = pd.read_csv(next((tmp_path / "cache").rglob("report.csv")))
    assert "a 16-bit image (values up to 1000; 10 bits would hold them) where no stored bit depth is declared" \
        in report["reason"].iloc[0]
    pixels, reason, _ = decoded(tmp_path / "x.png", 16, "squash", "fast")
    assert pixels is None and reason.endswith("give --bits N, the bits its scanner stored (one value for the call)")
    pixels, reason, _ = decoded(tmp_path / "x.png", 16, "squash", "fast", bits=12)
    assert reason is None and pixels.max() == round(1000 * 255 / 4095)
    assert main(["predict", "--run", "whatever", "--bits", "7", str(tmp_path)]) == 2   # before the run is read
    assert set(BIT_DEPTH) == set(FORMATS) == set(SOURCES)   # every source has its decision, recorded in its results


@pytest.mark.probe(issue=32, kind="silent")
def test_a_non_numeric_bit_depth_is_counted_and_named(tmp_path):
    root, path, frame = stand_in_table(tmp_path, "padchest", images=200)
    # over 1,000 rows, so that one cell is below the refusal threshold; the table is read, not the images
    frame = pd.concat([frame.assign(ImageID=f"{copy}-" + frame["ImageID"]) for copy in range(6)], ignore_index=True)
    frame.loc[0, "BitsStored_DICOM"] = "twelve"
    frame.to_csv(path, index=False)
    found = read("padchest", root, "all")
    common = int(pd.to_numeric(frame["BitsStored_DICOM"], errors="coerce").mode().iloc[0])
    assert f"1 BitsStored_DICOM cells not recognised ('twelve' (1)): read as the table's most common depth, " \
        f"{common} bits" in found.notes
    assert found.table.set_index("image_id").loc[frame.loc[0, "ImageID"], "bits"] == common


# --------------------------------------------------------------------------- what the reports tell a user to type
@pytest.mark.probe(issue=32, kind="silent")
def test_the_run_a_command_names_is_the_folder_below_runs(tmp_path):
    from cxrlib import runfiles

    assert runfiles.run_arg(tmp_path / "runs" / "ens" / "ensemble") == "ens/ensemble"   # make audit RUN=ens/ensemble
    assert runfiles.run_arg(tmp_path / "runs" / "demo") == "demo"
    assert runfiles.run_arg(tmp_path / "elsewhere" / "x") == "x"


@pytest.mark.probe(issue=32, kind="traceback")
def test_a_full_disk_during_the_cache_builds_own_writes_is_one_line_naming_the_cache(tmp_path, monkeypatch):
    import errno

    from PIL import Image

    from cxrlib.data import cache, cache_build

    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(tmp_path / "x.png")
    cohort = pd.DataFrame({"dicom_id": ["a"], "subject_id": ["1"], "study_id": ["1"], "split": ["external"],
                           "path": ["x.png"]})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(cache_build, "atomic_write_csv", full)   # the plan's write, after the reservation
    with pytest.raises(UserError, match=r"cache.*: writing the image cache failed, the disk is full \(.* MB free"):
        cache.build_cache(tmp_path, cohort, size=16, cache_dir=tmp_path / "cache", workers=1, progress=False,
                          reader={"formats": ["PNG"], "equalize": False})


@pytest.mark.probe(issue=32, kind="silent")
def test_a_map_label_the_table_never_holds_is_named(tmp_path):
    root, path, frame = stand_in_table(tmp_path, "padchest")
    assert frame["Labels"].str.contains("'cardiomegaly'").any()
    frame["Labels"] = frame["Labels"].str.replace("'cardiomegaly'", "'cardiomegalia'")   # another release's spelling
    frame.to_csv(path, index=False)
    found = read("padchest", root, "all")
    assert any(n.startswith("labels of the map this table never holds: ") and "'cardiomegaly'" in n for n in found.notes)
    assert found.table["Cardiomegaly"].isna().all()   # missing, never negative


@pytest.mark.probe(issue=32, kind="silent")
def test_nih_expert_cells_other_than_yes_no_blank_are_refused(tmp_path):
    rows = [f"{i:08d}_000.png,{i},{'YES' if i % 3 == 0 else 'NO'},NO,NO,NO,test" for i in range(40)]
    (tmp_path / "google2019_nih-chest-xray-labels.csv").write_text(
        "Image Index,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\n" + "\n".join(rows) + "\n")
    assert (read("nih", tmp_path, "expert").table["Fracture"] == 1).sum() == 14
    (tmp_path / "google2019_nih-chest-xray-labels.csv").write_text(
        "Image Index,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\n"
        + "\n".join(r.replace("YES", "Y") for r in rows) + "\n")
    with pytest.raises(UserError, match=r"label cells \(YES, NO or blank\) hold values .*'Y' \(14\)"):
        read("nih", tmp_path, "expert")
