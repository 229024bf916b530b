"""Export to, and import from, Hugging Face transformers' ``ASTForAudioClassification``.

transformers' AST is the fine-tuned AST architecture: square patches, two prefix tokens (cls
and distillation), classifier on the mean of the two (our ``ft_cls``). Models outside that
(``ft_avgtok`` heads, frame or non-square patches, ``base_nokd``) are refused with the reason:
fine-tune with ``--task ft_cls`` and 16x16 patches to export.

An exported folder holds the model's own geometry (frames, strides), its normalization and label
names (``id2label``), and ``problem_type`` (multi-label or single-label). :func:`read_folder`
reads such a folder (ours, or an AST model saved from the hub) back as a checkpoint, without
transformers: the loader (:func:`ssast.load`) takes it wherever a checkpoint is taken.
Written for the transformers 5 parameter names (``layers.N.attention.q_proj``, ``mlp.fc1``).
transformers uses one LayerNorm epsilon throughout; our classifier's LayerNorm keeps PyTorch's
default (1e-5, as the SSAST/AST code), so exported logits differ from ours by about 1e-6.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors

from .checkpoint import Checkpoint, CheckpointError, load_file
from .config import ModelConfig, size_from_width
from .features import FeatureConfig
from .model import ASTModel

_PREFIX = "audio_spectrogram_transformer."
MODEL_TYPE = "audio-spectrogram-transformer"  # config.json's model_type
PROBLEM_TYPES = {True: "multi_label_classification", False: "single_label_classification"}


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError("Hugging Face export needs the transformers package: pip install 'transformers==5.23.0'") from None
    return transformers


def check_exportable(model: ASTModel, task: str | None = None) -> None:
    """Raise ValueError with the reason if transformers' AST cannot express this model."""
    cfg = model.config
    task = task or cfg.default_task
    problems = []
    if cfg.stage != "finetune":
        problems.append("it is a pretraining-stage model (no classification head): fine-tune it first (ssast "
                        "finetune --init ... --task ft_cls), then export the fine-tuned model; or export it in the "
                        "released format (--format released) for the official code and s3prl")
    if cfg.stage == "finetune" and task != "ft_cls":
        problems.append(f"its head reads {task} (mean of the patch tokens); transformers' AST classifies the "
                        "mean of the cls and distillation tokens (ft_cls): fine-tune with --task ft_cls to export")
    if cfg.fshape != cfg.tshape:
        problems.append(f"its patches are {cfg.fshape}x{cfg.tshape}; transformers' AST has square patches only "
                        "(frame-based models cannot be expressed)")
    if cfg.num_prefix_tokens != 2:
        problems.append("it has one prefix token (base_nokd); transformers' AST has a distillation token")
    if cfg.mlp_ratio * cfg.embed_dim != int(cfg.mlp_ratio * cfg.embed_dim):
        problems.append("its MLP width is not an integer")
    if problems:
        raise ValueError("cannot export to transformers' ASTForAudioClassification: " + "; ".join(problems))


def to_hf_state_dict(model: ASTModel) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    d = model.config.embed_dim
    out = {
        _PREFIX + "embeddings.cls_token": sd["v.cls_token"],
        _PREFIX + "embeddings.distillation_token": sd["v.dist_token"],
        _PREFIX + "embeddings.position_embeddings": sd["v.pos_embed"],
        _PREFIX + "embeddings.patch_embeddings.projection.weight": sd["v.patch_embed.proj.weight"],
        _PREFIX + "embeddings.patch_embeddings.projection.bias": sd["v.patch_embed.proj.bias"],
        _PREFIX + "layernorm.weight": sd["v.norm.weight"],
        _PREFIX + "layernorm.bias": sd["v.norm.bias"],
        "classifier.layernorm.weight": sd["mlp_head.0.weight"],
        "classifier.layernorm.bias": sd["mlp_head.0.bias"],
        "classifier.dense.weight": sd["mlp_head.1.weight"],
        "classifier.dense.bias": sd["mlp_head.1.bias"],
    }
    for i in range(model.config.depth):
        src, dst = f"v.blocks.{i}.", f"{_PREFIX}layers.{i}."
        qkv_w, qkv_b = sd[src + "attn.qkv.weight"], sd[src + "attn.qkv.bias"]  # (3D, D): q, k, v stacked
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[dst + f"attention.{name}.weight"] = qkv_w[j * d:(j + 1) * d].clone()
            out[dst + f"attention.{name}.bias"] = qkv_b[j * d:(j + 1) * d].clone()
        pairs = {"attention.o_proj": "attn.proj", "layernorm_before": "norm1", "layernorm_after": "norm2",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        for hf_name, our_name in pairs.items():
            out[dst + hf_name + ".weight"] = sd[src + our_name + ".weight"]
            out[dst + hf_name + ".bias"] = sd[src + our_name + ".bias"]
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_hf_state_dict`."""
    out = {
        "v.cls_token": sd[_PREFIX + "embeddings.cls_token"],
        "v.dist_token": sd[_PREFIX + "embeddings.distillation_token"],
        "v.pos_embed": sd[_PREFIX + "embeddings.position_embeddings"],
        "v.patch_embed.proj.weight": sd[_PREFIX + "embeddings.patch_embeddings.projection.weight"],
        "v.patch_embed.proj.bias": sd[_PREFIX + "embeddings.patch_embeddings.projection.bias"],
        "v.norm.weight": sd[_PREFIX + "layernorm.weight"],
        "v.norm.bias": sd[_PREFIX + "layernorm.bias"],
        "mlp_head.0.weight": sd["classifier.layernorm.weight"],
        "mlp_head.0.bias": sd["classifier.layernorm.bias"],
        "mlp_head.1.weight": sd["classifier.dense.weight"],
        "mlp_head.1.bias": sd["classifier.dense.bias"],
    }
    for i in range(depth):
        src, dst = f"{_PREFIX}layers.{i}.", f"v.blocks.{i}."
        out[dst + "attn.qkv.weight"] = torch.cat([sd[src + f"attention.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")])
        out[dst + "attn.qkv.bias"] = torch.cat([sd[src + f"attention.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")])
        pairs = {"attention.o_proj": "attn.proj", "layernorm_before": "norm1", "layernorm_after": "norm2",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        for hf_name, our_name in pairs.items():
            out[dst + our_name + ".weight"] = sd[src + hf_name + ".weight"]
            out[dst + our_name + ".bias"] = sd[src + hf_name + ".bias"]
    return out


def export_hf(loaded, out_dir: str | os.PathLike) -> Path:
    """Write ``config.json``, the weights and ``preprocessor_config.json`` of a loaded model
    (:class:`ssast.loading.Loaded`) for transformers: its geometry, normalization, label names
    and problem type."""
    transformers = _require_transformers()
    model, cfg, feats = loaded.model, loaded.config, loaded.features
    check_exportable(model)
    labels = loaded.label_names()
    hf_cfg = transformers.ASTConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.mlp_ratio * cfg.embed_dim), hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.norm_eps, patch_size=cfg.fshape, qkv_bias=True,
        frequency_stride=cfg.fstride, time_stride=cfg.tstride, max_length=cfg.input_tdim,
        num_mel_bins=cfg.input_fdim, id2label={i: str(n) for i, n in enumerate(labels)},
        label2id={str(n): i for i, n in enumerate(labels)},
        problem_type=PROBLEM_TYPES.get(loaded.multilabel),
    )
    hf = transformers.ASTForAudioClassification(hf_cfg)
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    out = Path(out_dir)
    hf.save_pretrained(out)
    fe = transformers.ASTFeatureExtractor(
        feature_size=1, sampling_rate=feats.sample_rate, num_mel_bins=feats.num_mel_bins,
        max_length=feats.target_length, do_normalize=True, mean=float(feats.mean), std=float(feats.std),
        return_attention_mask=False,
    )
    fe.save_pretrained(out)
    extra = {"model": cfg.to_dict(), "features": feats.to_dict(), "label_ids": loaded.label_ids,
             "multilabel": loaded.multilabel}
    (out / SSAST_FILE).write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    return out


SSAST_FILE = "ssast_config.json"  # the exact model and feature config, beside transformers' files


# transformers writes AST folders with the names of its 4.x modules (the names of every AST model
# on the hub), and renames them to its 5.x modules on loading; both spellings are read here.
_FILE_NAMES = (
    (re.compile(r"\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\."),
     lambda m: f".layers.{m.group(1)}.attention.{m.group(2)[0]}_proj."),
    (re.compile(r"\.encoder\.layer\.(\d+)\.attention\.output\.dense\."), lambda m: f".layers.{m.group(1)}.attention.o_proj."),
    (re.compile(r"\.encoder\.layer\.(\d+)\.intermediate\.dense\."), lambda m: f".layers.{m.group(1)}.mlp.fc1."),
    (re.compile(r"\.encoder\.layer\.(\d+)\.output\.dense\."), lambda m: f".layers.{m.group(1)}.mlp.fc2."),
    (re.compile(r"\.encoder\.layer\.(\d+)\."), lambda m: f".layers.{m.group(1)}."),
)


def _module_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of an AST folder under the names :func:`from_hf_state_dict` reads."""
    out = {}
    for k, v in sd.items():
        k = k[len("model."):] if k.startswith("model.") else k
        for pattern, repl in _FILE_NAMES:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    st, pt = path / "model.safetensors", path / "pytorch_model.bin"
    if st.is_file():
        try:
            return load_safetensors(str(st))
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(st, f"unreadable safetensors file ({e})") from None
    if pt.is_file():
        return load_file(pt)
    raise CheckpointError(path, "Hugging Face folder without weights (model.safetensors or pytorch_model.bin)")


def read_folder(path: str | os.PathLike) -> Checkpoint:
    """An ``ASTForAudioClassification`` folder as a checkpoint (format ``hf``), fine-tuning stage."""
    path = Path(path)
    try:
        c = json.loads((path / "config.json").read_text(encoding="utf-8"))
        fe = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8")) \
            if (path / "preprocessor_config.json").is_file() else {}
        ours = json.loads((path / SSAST_FILE).read_text(encoding="utf-8")) if (path / SSAST_FILE).is_file() else {}
        hidden, depth = int(c["hidden_size"]), int(c["num_hidden_layers"])
        id2label = {int(k): str(v) for k, v in (c.get("id2label") or {}).items()}
        cfg = ModelConfig(
            embed_dim=hidden, depth=depth, num_heads=int(c["num_attention_heads"]), num_prefix_tokens=2,
            mlp_ratio=int(c["intermediate_size"]) / hidden, fshape=int(c.get("patch_size", 16)),
            tshape=int(c.get("patch_size", 16)), fstride=int(c.get("frequency_stride", 10)),
            tstride=int(c.get("time_stride", 10)), input_fdim=int(c.get("num_mel_bins", 128)),
            input_tdim=int(c.get("max_length", 1024)), label_dim=len(id2label) or int(c.get("num_labels", 2)),
            model_size=size_from_width(hidden, 2) or "custom", stage="finetune", default_task="ft_cls",
            norm_eps=float(c.get("layer_norm_eps", 1e-12)),
        )
        if ours.get("model"):  # our own export: the exact config (model size name, default task)
            cfg = ModelConfig.from_dict(ours["model"])
        features = FeatureConfig(sample_rate=int(fe.get("sampling_rate", 16000)), num_mel_bins=cfg.input_fdim,
                                 mean=float(fe.get("mean", -4.2677393)), std=float(fe.get("std", 4.5689974)),
                                 target_length=int(fe.get("max_length", cfg.input_tdim)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path, f"not a readable Hugging Face AST folder ({type(e).__name__}: {e})") from None
    sd = _module_names(_weights(path))
    try:
        state = from_hf_state_dict(sd, depth)
    except KeyError as e:
        raise CheckpointError(path, f"missing weight {e.args[0]} in the Hugging Face folder") from None
    meta = {"source": "hf"}
    problem = c.get("problem_type")
    multilabel = ours.get("multilabel")
    if multilabel is None and problem in PROBLEM_TYPES.values():
        multilabel = problem == PROBLEM_TYPES[True]
    if multilabel is not None:
        meta["multilabel"] = bool(multilabel)
    if ours.get("label_ids"):
        meta["label_ids"] = ours["label_ids"]
    labels = [id2label[i] for i in range(cfg.label_dim)] if len(id2label) == cfg.label_dim else None
    return Checkpoint(str(path), "hf", cfg, state, features=features.to_dict(), labels=labels, meta=meta)
