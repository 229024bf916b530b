"""Export to, and import from, Hugging Face transformers' ``ASTForAudioClassification``.

transformers' AST is the fine-tuned AST architecture: square patches, two prefix tokens (cls
and distillation), classifier on the mean of the two (our ``ft_cls``). Models outside that
(``ft_avgtok`` heads, frame or non-square patches, ``base_nokd``) are refused with the reason.
Written for the transformers 5 parameter names (``layers.N.attention.q_proj``, ``mlp.fc1``).
transformers uses one LayerNorm epsilon throughout; our classifier's LayerNorm keeps PyTorch's
default (1e-5, as the SSAST/AST code), so exported logits differ from ours by about 1e-6.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import ModelConfig, size_from_width
from .model import ASTModel

_PREFIX = "audio_spectrogram_transformer."
# Our fine-tuned models' feature defaults (AudioSet normalisation, 16 kHz, 128 bins).
_FEATURE_DEFAULTS = dict(sample_rate=16000, num_mel_bins=128, mean=-4.2677393, std=4.5689974)


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
        problems.append("it is a pretraining-stage model (no classification head)")
    if task != "ft_cls":
        problems.append(f"its head reads {task} (mean of the patch tokens); transformers' AST classifies the "
                        "mean of the cls and distillation tokens (ft_cls)")
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


def export_hf(model: ASTModel, out_dir: str | os.PathLike, *, labels: list[str] | None = None,
              features: dict | None = None, task: str | None = None) -> Path:
    """Write ``config.json``, the weights and ``preprocessor_config.json`` for transformers."""
    transformers = _require_transformers()
    check_exportable(model, task)
    cfg = model.config
    labels = labels or getattr(model, "labels", None) or [f"LABEL_{i}" for i in range(cfg.label_dim)]
    if len(labels) != cfg.label_dim:
        raise ValueError(f"{len(labels)} label names for a model with {cfg.label_dim} outputs")
    feats = {**_FEATURE_DEFAULTS, **(features or getattr(model, "features", None) or {})}
    if int(feats["num_mel_bins"]) != cfg.input_fdim:
        raise ValueError(f"feature settings have {feats['num_mel_bins']} mel bins, the model {cfg.input_fdim}")
    hf_cfg = transformers.ASTConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.mlp_ratio * cfg.embed_dim), hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.norm_eps, patch_size=cfg.fshape, qkv_bias=True,
        frequency_stride=cfg.fstride, time_stride=cfg.tstride, max_length=cfg.input_tdim,
        num_mel_bins=cfg.input_fdim, id2label={i: str(n) for i, n in enumerate(labels)},
        label2id={str(n): i for i, n in enumerate(labels)},
    )
    hf = transformers.ASTForAudioClassification(hf_cfg)
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    out = Path(out_dir)
    hf.save_pretrained(out)
    fe = transformers.ASTFeatureExtractor(
        feature_size=1, sampling_rate=int(feats["sample_rate"]), num_mel_bins=cfg.input_fdim,
        max_length=cfg.input_tdim, do_normalize=True, mean=float(feats["mean"]), std=float(feats["std"]),
        return_attention_mask=False,
    )
    fe.save_pretrained(out)
    (out / "ssast_config.json").write_text(json.dumps({"model": cfg.to_dict(), "features": feats}, indent=2))
    return out


def import_hf(path: str | os.PathLike) -> ASTModel:
    """An ``ASTForAudioClassification`` folder (ours or from the hub, saved locally) as an ASTModel."""
    transformers = _require_transformers()
    path = Path(path)
    hf = transformers.ASTForAudioClassification.from_pretrained(path)
    c = hf.config
    cfg = ModelConfig(
        embed_dim=c.hidden_size, depth=c.num_hidden_layers, num_heads=c.num_attention_heads,
        num_prefix_tokens=2, mlp_ratio=c.intermediate_size / c.hidden_size, fshape=c.patch_size,
        tshape=c.patch_size, fstride=c.frequency_stride, tstride=c.time_stride, input_fdim=c.num_mel_bins,
        input_tdim=c.max_length, label_dim=c.num_labels,
        model_size=size_from_width(c.hidden_size, 2) or "custom", stage="finetune", default_task="ft_cls",
        norm_eps=c.layer_norm_eps,
    )
    model = ASTModel(config=cfg)
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg.depth), strict=True)
    model.labels = [c.id2label[i] for i in range(c.num_labels)]
    fe_file = path / "preprocessor_config.json"
    if fe_file.exists():
        fe = json.loads(fe_file.read_text())
        model.features = {"sample_rate": fe.get("sampling_rate", 16000), "num_mel_bins": fe.get("num_mel_bins", 128),
                          "mean": fe.get("mean"), "std": fe.get("std"), "target_length": fe.get("max_length")}
    return model.eval()
