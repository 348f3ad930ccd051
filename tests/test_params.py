import re
from pathlib import Path

import pytest
import yaml

from cxrlib import params, runfiles
from cxrlib.errors import UserError
from cxrlib.experiments import runs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_validates(preset):
    p = params.load(preset)
    assert p.name == preset.stem


def test_seed_presets_reproduce_the_original_recipe():
    for name, pos in (("seed-nopos", False), ("seed-pos", True)):
        p = params.load(ROOT / "params" / f"{name}.yaml")
        assert (p.views, p.label_source, p.uncertain_policy, p.blank_policy) == (["AP"], "negbio", "zeros", "zeros")
        assert (p.image_size, p.resize, p.head, p.arch, p.weights) == (256, "squash", "flatten", "resnet101", "IMAGENET1K_V1")
        assert (p.optimizer, p.lr, p.batch_size, p.epochs, p.schedule) == ("adam", 1e-4, 64, 100, "constant")
        assert (p.select_on, p.select_metric, p.patience, p.pos_weight) == ("test", "accuracy", 5, pos)
        assert (p.mean, p.std, p.augment, p.amp) == (0.4690693035517775, 0.3045583482083454, False, "off")
        text = (ROOT / "params" / f"{name}.yaml").read_text()
        assert "SELECTS THE MODEL ON THE TEST SET" in text


def test_improved_preset_is_honest():
    p = params.load(ROOT / "params" / "improved.yaml")
    assert p.select_on == "validate" and p.val_fraction > 0 and p.split_mode == "seed"
    assert p.uncertain_policy == {"Atelectasis": "ones", "Edema": "ones", "default": "zeros"}
    assert (p.head, p.optimizer, p.schedule, p.amp, p.image_size, p.augment) == ("avgpool", "adamw", "cosine", "bf16", 384, True)


def test_unknown_key_lists_the_valid_ones(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("epochz: 3\n")
    with pytest.raises(params.ParamError) as e:
        params.load(f)
    assert "epochz" in str(e.value) and "epochs" in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize("key,value,expect", [
    ("epochs", "three", "epochs"), ("device", "tpu", "cpu | gpu | auto"), ("augment", "yes", "bool"),
    ("views", 3, "views"), ("uncertain_policy", "maybe", "uncertain_policy"),
    ("uncertain_policy", {"Edemaa": "ones"}, "Edemaa"), ("image_size", 8, "image_size"),
])
def test_wrong_types_are_named(key, value, expect):
    with pytest.raises(params.ParamError, match=re.escape(expect)):
        params.validate({key: value, "val_fraction": 0.1})


def test_credentials_are_never_parameters():
    with pytest.raises(params.ParamError, match="PHYSIONET_USERNAME"):
        params.validate({"physionet_password": "x"})


def test_select_on_validate_needs_a_validation_split():
    p = params.validate({"select_on": "validate", "val_fraction": 0.0, "split_mode": "seed"})
    with pytest.raises(params.ParamError, match="val_fraction"):
        params.check_for_training(p)
    params.check_for_training(params.validate({"select_on": "test"}))


def test_overrides_parse_as_yaml():
    assert params.parse_override("epochs=3") == ("epochs", 3)
    assert params.parse_override("views=[AP, PA]") == ("views", ["AP", "PA"])
    assert params.parse_override("weights=none") == ("weights", "none")
    assert params.parse_override("mean=null") == ("mean", None)


def test_freeze_roundtrip(tmp_path):
    p = params.load(ROOT / "params" / "improved.yaml")
    runfiles.freeze(p, tmp_path)
    assert runfiles.load_frozen(tmp_path) == p
    assert not list(tmp_path.glob(".*tmp"))


def test_make_variables_reach_parameters_under_the_same_name():
    env = {"DEVICE": "gpu", "GPUS": "4", "EPOCHS": "3", "VIEWS": "[AP, PA]", "RUN": "x", "PARAMS": "p.yaml"}
    got = runs.make_overrides("DEVICE=gpu GPUS=4 EPOCHS=3 VIEWS=[AP,\\ PA] RUN=x PARAMS=p.yaml", env)
    assert got == {"device": "gpu", "gpus": 4, "epochs": 3, "views": ["AP", "PA"]}
    assert runs.make_overrides("RESUME=1 RUN=x", {"RESUME": "1"}) == {"resume": True}
    with pytest.raises(UserError, match="EPOCHZ is not a parameter"):
        runs.make_overrides("EPOCHZ=3", {"EPOCHZ": "3"})


def test_resolve_from_a_frozen_run(tmp_path):
    p = params.load(ROOT / "params" / "demo.yaml", {"runs_dir": str(tmp_path), "name": "r1", "epochs": 2})
    runfiles.freeze(p, tmp_path / "r1")
    again = runs.resolve(None, "r1", {"resume": True}, runs_dir=tmp_path)
    assert again.epochs == 2 and again.resume and again.name == "r1"
    with pytest.raises(UserError, match="no frozen parameters"):
        runs.resolve(None, "nope", {}, runs_dir=tmp_path)


def test_select_notebooks():
    assert runs.select_notebooks("03,04") == ["03_evaluate", "04_error_analysis"]
    assert runs.select_notebooks(None) == runfiles.NOTEBOOKS
    with pytest.raises(UserError, match="07"):
        runs.select_notebooks("07")


def test_environment_yml_mirrors_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {d.lower() for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {d.lower() for d in pip if not d.startswith("-e")}
    assert listed == wanted


def test_makefile_lists_every_target_in_help():
    text = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split())
    documented = set(re.findall(r"^([a-z-]+):.*## ", text, re.M))
    assert phony - {"FORCE"} <= documented | {"FORCE"}
    for target in ("demo", "test", "help", "lab", "setup", "train", "evaluate", "fetch", "cache", "report", "runs", "diff"):
        assert target in documented


def test_stages_cover_every_field_once():
    assert sorted(params.STAGE_OF) == sorted(params.FIELDS)
    assert sum(len(v) for v in params.STAGES.values()) == len(params.FIELDS)


def test_check_change_refuses_fixed_stages_and_allows_runtime_and_evaluate(tmp_path):
    old = params.validate({"val_fraction": 0.1}).to_dict()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "cohort.csv").write_text("x")
    # cohort fixed, no checkpoint yet: training fields may still change, cohort fields not
    runfiles.check_change(old, params.validate({**old, "lr": 0.5, "image_size": 128}), tmp_path)
    with pytest.raises(params.ParamError, match=r"views \(cohort\): \['AP'\] -> \['PA'\].*RUN=<new name>"):
        runfiles.check_change(old, params.validate({**old, "views": ["PA"]}), tmp_path)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    for change in ({"lr": 0.5}, {"image_size": 128}, {"arch": "resnet50"}, {"mean": 0.5}):
        with pytest.raises(params.ParamError, match=next(iter(change))):
            runfiles.check_change(old, params.validate({**old, **change}), tmp_path)
    allowed = {"device": "gpu", "num_workers": 0, "epochs": 3, "bootstrap": 10, "compare_with": "x",
               "redact_images": True, "data_root": "elsewhere", "resume": True}
    runfiles.check_change(old, params.validate({**old, **allowed}), tmp_path)
    try:
        runfiles.check_change(old, params.validate({**old, "lr": 0.5, "seed": 3}), tmp_path)
    except params.ParamError as e:   # one message lists every refused difference
        assert "lr (train): 0.0001 -> 0.5" in str(e) and "seed (train): 0 -> 3" in str(e)


def test_a_params_yaml_from_before_split_seed_keeps_the_split_it_carved(tmp_path):
    """Before split_seed, `seed` carved the validation split: such a run reads back with split_seed = seed, so
    its cohort.csv still matches its parameters; where nothing was carved, split_seed plays no part (0)."""
    import yaml

    old = {"name": "old", "seed": 3, "split_mode": "seed", "val_fraction": 0.1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
    assert runfiles.load_frozen(tmp_path).split_seed == 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**old, "split_mode": "official", "val_fraction": 0.0}))
    assert runfiles.load_frozen(tmp_path).split_seed == 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**old, "split_seed": 7}))
    assert runfiles.load_frozen(tmp_path).split_seed == 7
    assert params.STAGE_OF["seed"] == "train" and params.STAGE_OF["split_seed"] == "cohort"


def test_make_tensorboard_finds_a_single_runs_logs_without_a_sweep(tmp_path):
    """Its check once listed two globs with ls, which fails when either matches nothing (no sweep folder), so it
    always began by saying there were no logs."""
    import subprocess

    recipe = (ROOT / "Makefile").read_text().split("\ntensorboard:", 1)[1].split("\n\t")[1]
    check = recipe.lstrip("@")
    (tmp_path / "runs" / "demo" / "tb").mkdir(parents=True)
    said = subprocess.run(["bash", "-c", check], cwd=tmp_path, capture_output=True, text=True).stdout
    assert said == ""
    (tmp_path / "runs" / "demo" / "tb").rmdir()
    said = subprocess.run(["bash", "-c", check], cwd=tmp_path, capture_output=True, text=True).stdout
    assert said.startswith("no TensorBoard logs under runs/ yet")


def test_every_preset_the_docs_name_exists():
    """docs/pretrained-weights.md once sent readers to params/original*.yaml, which never existed."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {(page.name, m) for page in texts for m in re.findall(r"params/[\w*./-]+?\.yaml", page.read_text())}
    missing = [(page, m) for page, m in named if not list(ROOT.glob(m))]
    assert named and not missing
