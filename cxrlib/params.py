"""One typed schema for every parameter: YAML files, papermill, CLI flags and Make variables.

A parameter has one name everywhere (`DEVICE=gpu` on the make line is `device: gpu`
here). Validation happens before any notebook starts: papermill itself only warns
about names a notebook does not declare.

Credentials are never parameters: papermill writes parameters into the executed
notebook. `physionet.py` reads them from the environment, ~/.netrc or a prompt.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from . import labelset
from .errors import UserError
from .labels import BLANK_POLICIES, UNCERTAIN_POLICIES, per_finding
from .param_rules import value_checks

Policy = Union[str, dict]


@dataclass
class Params:
    # --- run ---
    name: str = "demo"                  # run folder: runs/<name>/
    runs_dir: str = "runs"
    seed: int = 0                       # initial weights, data order, augmentation, bootstrap draws
    device: Literal["cpu", "gpu", "auto"] = "auto"
    deterministic: bool = False         # CPU runs are always deterministic; this also pins cuDNN
    # --- data and cohort (01) ---
    data_root: str = "data/demo"        # MIMIC-CXR-JPG root: the CSVs and files/
    views: list = field(default_factory=lambda: ["AP"])
    studies_per_subject: Literal["first", "all"] = "first"   # first: the lowest study_id with an in-view image
    images_per_study: Literal["first", "all"] = "first"      # first: the lowest in-view dicom_id of a study
    label_set: str = "chexpert14"       # what the model predicts: a shipped set (cxrlib/label_sets/) or a YAML file
    label_source: Literal["negbio", "chexpert"] = "negbio"   # chexpert14's labeler table
    uncertain_policy: Policy = "zeros"  # zeros | ones | ignore, or {finding: policy, default: policy}
    blank_policy: Policy = "zeros"      # zeros | ignore, or per finding
    split_mode: Literal["seed", "official", "label_set"] = "seed"  # seed: the original's study_id rule; label_set:
    #                                                                  the set's own train/development/test
    val_fraction: float = 0.0           # carved from the non-test part, per subject, by a stable hash
    split_seed: int = 0                 # the carve's hash seed: runs differing only in `seed` share a cohort
    # --- image cache ---
    cache_dir: str = ""                 # default: <data_root>/cache
    image_size: int = 256
    resize: Literal["squash", "letterbox"] = "squash"
    decode: Literal["fast", "exact"] = "fast"   # exact: the original's full decode + resize, pixel for pixel
    cache_workers: int = 0              # 0: all cores
    # --- input pipeline ---
    mean: Optional[float] = 0.4691      # None: the training images' mean from the cache
    std: Optional[float] = 0.3046
    augment: bool = False
    hflip: bool = False                 # off by default: a flip moves the heart to the right
    aug_rotate: float = 10.0            # degrees
    aug_scale: float = 0.10
    aug_translate: float = 0.05         # fraction of the image size
    aug_brightness: float = 0.10
    aug_contrast: float = 0.10
    num_workers: int = 2
    # --- model ---
    arch: str = "resnet101"             # resnet101 | resnet50 | densenet121 | resnet18 | timm:<model>, e.g. timm:convnext_tiny
    head: Literal["flatten", "avgpool"] = "flatten"
    weights: str = "imagenet"           # imagenet | none | a local file or Hugging Face folder (training/weights.py)
    weights_manifest: str = ""          # the starting weights' training-image list: overlap with the test split counted
    freeze: Literal["none", "backbone"] = "none"   # backbone: a linear probe (only the head trains)
    # images: train on the images; embeddings: a linear probe on the embedding cache (each image through the frozen
    # backbone once, data/embeddings.py); zero_shot: a CLIP model's prompts make the head, nothing trains
    train_from: Literal["images", "embeddings", "zero_shot"] = "images"
    train_fraction: float = 1.0         # the share of training patients whose labels train (nested subsets per seed)
    prompts: str = ""                   # zero_shot: a prompts YAML; empty: the label set's (cxrlib/label_sets/prompts/)
    backbone_lr: float = 1.0            # the backbone's learning rate as a multiple of lr
    dropout: float = 0.0
    # --- training (02) ---
    epochs: int = 100
    batch_size: int = 64
    eval_batch_size: int = 128
    lr: float = 1e-4
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0              # 0: off
    pos_weight: bool = False            # BCE pos_weight = neg/pos per finding, from the training labels
    loss: Literal["bce", "focal", "asl"] = "bce"   # focal (Lin 2017) and asymmetric (Ridnik 2021) for long tails
    focal_gamma: float = 2.0
    focal_alpha: float = -1.0           # positives' weight in [0, 1] (negatives': 1 - it); -1: none
    asl_gamma_neg: float = 4.0          # ASL's focusing of negatives, of positives, and its probability margin
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    select_on: Literal["validate", "test"] = "validate"  # "test" only in the presets that copy the original
    select_metric: Literal["auroc", "accuracy"] = "auroc"
    patience: int = 5
    amp: Literal["bf16", "fp16", "off"] = "bf16"  # GPU only, unless cpu_amp
    channels_last: bool = True          # GPU only, unless cpu_amp
    cpu_amp: bool = False               # train on a CPU with bf16 autocast + channels_last too (scoring stays fp32)
    compile: bool = False
    gpus: int = 1
    resume: bool = False
    max_train_batches: int = 0          # 0: all; for smoke tests
    checkpoint_minutes: float = 10.0    # also save last.pt mid-epoch this often (0: at epoch ends only)
    tracker: Literal["none", "tensorboard", "mlflow"] = "none"   # local stores: runs/<name>/tb/, runs/mlruns/
    tracking_uri: str = ""              # mlflow only; a remote server is warned about (PhysioNet's DUA)
    # --- evaluation (03, 04) ---
    tta: bool = False
    eval_level: Literal["image", "study"] = "image"      # study: a study's images aggregated, one score per study
    study_aggregate: Literal["mean", "max"] = "mean"     # how a study's image probabilities become one
    bootstrap: int = 1000
    ci_level: float = 0.95
    compare_with: str = ""              # another run's name, for paired differences
    compare_on: Literal["identical", "shared"] = "identical"   # shared: only the test units both runs have
    topk: int = 6
    redact_images: bool = False         # reports without any pixel data
    report_code: Literal["show", "hide"] = "hide"   # hide: HTML of notebooks 03-06 without their code cells
    calibration: Literal["none", "temperature", "isotonic"] = "none"   # fitted on validation, applied to test
    min_positives: int = 10             # a finding with fewer positive (or negative) units: no CI, not in macros
    # --- audit by patient group (05) ---
    mimic_iv_root: str = ""             # MIMIC-IV's hosp/ (or 1.0's core/) tables; default <data_root>/mimic-iv
    race_policy: Literal["mode", "first", "unknown"] = "mode"   # one race per patient across admissions
    min_group_patients: int = 30        # smaller groups are shown as "<N", never plotted
    age_bands: Literal["cxrlib", "seyyed-kalantari"] = "cxrlib"   # seyyed-kalantari: 0-20, 20-40, ... 80+

    def resolved_mimic_iv_root(self) -> Path:
        return Path(self.mimic_iv_root) if self.mimic_iv_root else Path(self.data_root) / "mimic-iv"

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_root) / "cache"

    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Each field belongs to the stage whose output it shapes. Once a stage has produced its output in a run
# folder, its fields are fixed for that run (see check_change): runtime fields (where and how fast)
# may change on any command, evaluate fields at any evaluation.
STAGES = {
    "runtime": ("name", "runs_dir", "device", "deterministic", "data_root", "cache_dir", "cache_workers",
                "num_workers", "channels_last", "compile", "gpus", "resume", "checkpoint_minutes",
                "eval_batch_size", "redact_images", "report_code", "mimic_iv_root", "tracker", "tracking_uri",
                "epochs", "patience"),   # how long training goes on: a run can be extended
    "cohort": ("views", "studies_per_subject", "images_per_study", "label_set", "label_source", "uncertain_policy",
               "blank_policy", "split_mode", "val_fraction", "split_seed"),
    "cache": ("image_size", "resize", "decode"),
    "train": ("seed", "mean", "std", "augment", "hflip", "aug_rotate", "aug_scale", "aug_translate", "aug_brightness",
              "aug_contrast", "arch", "head", "weights", "weights_manifest", "freeze", "train_from", "train_fraction",
              "prompts", "backbone_lr", "dropout",
              "batch_size", "lr", "optimizer",
              "weight_decay", "schedule", "warmup_epochs", "grad_clip", "pos_weight", "loss", "focal_gamma",
              "focal_alpha", "asl_gamma_neg", "asl_gamma_pos", "asl_clip", "select_on",
              "select_metric", "amp", "cpu_amp", "max_train_batches"),
    "evaluate": ("tta", "eval_level", "study_aggregate", "calibration", "bootstrap", "ci_level", "compare_with", "topk",
                 "race_policy", "min_group_patients", "min_positives", "age_bands", "compare_on"),
}
STAGE_OF = {name: stage for stage, names in STAGES.items() for name in names}
# What each notebook's parameters cell may declare besides run_dir: its own stage's fields.
NOTEBOOK_KNOBS = {
    "01_cohort": STAGES["cohort"] + STAGES["cache"],
    "02_train": STAGES["train"] + ("epochs", "patience", "resume"),
    "03_evaluate": STAGES["evaluate"],
    "04_error_analysis": STAGES["evaluate"],
    "05_fairness": STAGES["evaluate"],
}

FIELDS = {f.name: f for f in dataclasses.fields(Params)}
_HINTS = typing.get_type_hints(Params)
FORBIDDEN = ("password", "passwd", "pwd", "username", "user", "token", "secret", "credential")


class ParamError(UserError, ValueError):
    """A parameter is unknown or has the wrong type; the message says how to fix it."""


def names() -> list[str]:
    return list(FIELDS)


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    if origin is Union:
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None)) + " or null"
    return getattr(hint, "__name__", str(hint))


def _coerce(key: str, value: Any, hint, where: str) -> Any:
    origin = typing.get_origin(hint)
    bad = ParamError(f"{where}: parameter {key!r} = {value!r} should be {_describe(hint)}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise bad
        return value
    if origin is Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a, where)
            except ParamError:
                pass
        raise bad
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if hint is list:
        if isinstance(value, str):   # VIEWS=AP,PA on the make line means two views
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return list(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise bad


def suggest(name: str, valid) -> str:
    """'EPOCHS' for 'EPOCHZ': the nearest valid names, for a message."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    return " or ".join(close)


def validate(values: dict, where: str = "parameters", sources: dict | None = None) -> Params:
    """Build a Params from a mapping; unknown keys and wrong types raise ParamError.

    sources: where a key's value came from when not from `where` (the make line, -p, a notebook cell).
    """
    sources = sources or {}
    secret = [k for k in values if any(s in k.lower() for s in FORBIDDEN)]
    if secret:
        raise ParamError(
            f"{where}: {secret} look like credentials. Credentials are never parameters "
            "(papermill writes parameters into the executed notebook). Set PHYSIONET_USERNAME and "
            "PHYSIONET_PASSWORD in the environment, use ~/.netrc, or answer the prompt."
        )
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        hints = [f"{k!r} (did you mean {suggest(k, FIELDS)}?)" if suggest(k, FIELDS) else repr(k) for k in unknown]
        listing = "" if all(suggest(k, FIELDS) for k in unknown) else f". Valid parameters: {', '.join(FIELDS)}"
        raise ParamError(f"{sources.get(unknown[0], where)}: unknown parameter(s) {', '.join(hints)}{listing}")
    clean = {k: _coerce(k, v, _HINTS[k], sources.get(k, where)) for k, v in values.items()}
    p = Params(**clean)
    try:
        lset = labelset.load(p.label_set)
    except labelset.LabelSetError as e:
        raise ParamError(f"{sources.get('label_set', where)}: {e}") from None
    try:
        per_finding(p.uncertain_policy, UNCERTAIN_POLICIES, "uncertain_policy", lset.labels)
        per_finding(p.blank_policy, BLANK_POLICIES, "blank_policy", lset.labels)
    except ValueError as e:
        raise ParamError(f"{where}: {e}") from None
    if p.split_mode == "label_set" and lset.splits != "label_set":
        raise ParamError(f"{sources.get('split_mode', where)}: split_mode: label_set takes the label set's own "
                         f"train/development/test tables, and {lset.name} has none (splits: {lset.splits}); "
                         "use split_mode: seed or official")
    for field_name, ok, message in value_checks(p):   # the field names where its value came from (sources)
        if not ok:
            raise ParamError(f"{sources.get(field_name, where)}: {message}")
    return p


def check_for_training(p: Params, where: str = "parameters") -> None:
    """Checks that matter only when a model is trained (the cohort alone needs no validation split)."""
    if p.select_on == "validate" and p.val_fraction <= 0 and p.split_mode not in ("official", "label_set"):
        raise ParamError(f"{where}: select_on: validate needs a validation split: set val_fraction > 0 "
                         "(e.g. 0.1) or split_mode: official")
    if p.prompts and not Path(p.prompts).is_file():
        raise ParamError(f"{where}: prompts: {p.prompts} does not exist; give a prompts YAML (the format of "
                         "cxrlib/label_sets/prompts/chexpert14.yaml), or leave it empty for the label set's own")
    if p.weights_manifest and not Path(p.weights_manifest).is_file():
        raise ParamError(f"{where}: weights_manifest: {p.weights_manifest} does not exist; give the CSV that lists "
                         "the starting weights' training images (e.g. RAD-DINO's training_images.csv), or leave it empty")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as YAML (so 3, true, [AP, PA] work)."""
    if "=" not in text:
        raise ParamError(f"-p {text!r}: write overrides as key=value, e.g. -p epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


PRESETS = Path("params")   # the presets, relative to the project root (where every command and notebook works)
DEMO_PRESET = PRESETS / "demo.yaml"   # the notebooks' defaults: what a notebook opened without a run starts from


def read_yaml(path, missing: str = "", expected: str = "a mapping of parameter: value", error=None) -> dict:
    """A YAML file holding a mapping; a missing file, bad YAML or another shape raise `error` (ParamError)
    naming the file. missing: what to say when it does not exist (default: the presets in params/)."""
    path, error = Path(path), error or ParamError
    if not path.is_file():
        raise error(f"{path}: " + (missing or "no such parameter file. The presets are in params/: "
                                   + ", ".join(sorted(p.name for p in PRESETS.glob("*.yaml")))))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected {expected}")
    return data


def load(path=None, overrides: Optional[dict] = None) -> Params:
    """Defaults, then the YAML file, then overrides (CLI -p, Make variables)."""
    values = read_yaml(path) if path else {}
    where = str(path) if path else "parameters"
    values.update(overrides or {})
    return validate(values, where)


# What every report says of a run selected on the test split (training warns with it, the notebooks show it).
