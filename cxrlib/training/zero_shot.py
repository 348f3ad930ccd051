"""Zero-shot heads from a CLIP model's text tower, CheXzero's way (Tiu et al. 2022).

For each label, a positive and a negative prompt (cxrlib/label_sets/prompts/, or the run's `prompts:` file) are
encoded and normalised; the label's probability is the softmax of the image embedding's cosine similarity to the
two, which is sigmoid((t_pos - t_neg) . e) for the normalised image embedding e. So the head is one Linear layer
with rows t_pos - t_neg and no bias, and a zero-shot run is a checkpoint like any other: evaluated, audited,
exported and carded by the same code. Cosine similarities are used as CheXzero used them, without CLIP's logit
scale; AUROC does not depend on it, and calibration (notebook 03) is fitted on validation.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from .. import labelset
from ..errors import UserError
from ..fsutil import sha256_file
from . import clip_models

PROMPTS = Path(__file__).resolve().parents[1] / "label_sets" / "prompts"
METHOD = "CheXzero: softmax of the cosine similarities to a positive and a negative prompt (no logit scale)"


def prompts_file(label_set: str, given: str = "") -> Path:
    """The run's prompts: its own file, else its label set's, else the default template."""
    if given:
        return Path(given)
    own = PROMPTS / f"{Path(str(label_set)).stem}.yaml"
    return own if own.is_file() else PROMPTS / "default.yaml"


def load_prompts(labels: list[str], path: Path) -> dict[str, dict[str, str]]:
    """{label: {positive, negative}} for every label, from a prompts YAML (template, labels)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        template = data.get("template") or {"positive": "{}", "negative": "no {}"}
        given = data.get("labels") or {}
        template["positive"].format("x"), template["negative"].format("x")
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"prompts: {path} is not a prompts file (template: {{positive, negative}}, labels: {{label: "
                        f"{{positive, negative}}}}): {type(e).__name__}: {e}") from None
    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise UserError(f"prompts: {path} gives prompts for {unknown}, which are not the run's labels {labels}; "
                        "fix the names (they are matched exactly)")
    out = {}
    for label in labels:
        pair = given.get(label) or {k: template[k].format(label) for k in ("positive", "negative")}
        if not isinstance(pair, dict) or not {"positive", "negative"} <= set(pair):
            raise UserError(f"prompts: {path}: {label!r} needs a positive and a negative prompt")
        out[label] = {"positive": str(pair["positive"]), "negative": str(pair["negative"])}
    return out


@torch.no_grad()
def prompt_weights(encode_text, prompts: dict[str, dict[str, str]]) -> torch.Tensor:
    """(labels, embed dim): each label's normalised positive minus its normalised negative text embedding;
    encode_text(texts) -> embeddings (training.clip_models.text_encoder)."""
    def encoded(texts):
        return torch.nn.functional.normalize(encode_text(texts).float(), dim=-1)

    labels = list(prompts)
    return encoded([prompts[x]["positive"] for x in labels]) - encoded([prompts[x]["negative"] for x in labels])


def set_zero_shot_head(model, params, labels: list[str]) -> dict:
    """Sets the classifier's Linear to the prompts' weights; returns what the run records of them."""
    path = prompts_file(params.label_set, params.prompts)
    prompts = load_prompts(list(labels or labelset.load(params.label_set).labels), path)
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(prompt_weights(clip_models.text_encoder(params.weights), prompts).to(linear.weight))
        linear.bias.zero_()
    return {"method": METHOD, "prompts_file": path.name, "prompts_sha256": sha256_file(path), "prompts": prompts}
