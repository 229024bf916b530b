"""ONNX export of fine-tuned models, for ONNX Runtime on field devices and servers.

Two variants:

- ``with_features=False``: the model alone. Input ``spectrogram`` (batch, frames, mel bins),
  normalized model input as :meth:`ASTModel.forward` takes it; output ``logits``
  (batch, label_dim). The batch is dynamic; frames and mel bins are the model's.
- ``with_features=True``: the Kaldi fbank inside. Input ``waveform`` (batch, samples), mono,
  float in [-1, 1] at the feature settings' sample rate; output ``logits``. Batch and number of
  samples are both dynamic: a clip shorter than the model's input is zero-padded in the features
  and a longer one cropped to its first ``target_length`` frames, as
  :class:`ssast.features.FeatureExtractor` does.

Label names, feature settings, task and input kind are written into the file's
``metadata_props`` (see :func:`export_metadata`), so the file says what its outputs mean.

Models are exported with PyTorch's ``torch.export``-based exporter (``dynamo=True``).
PyTorch's older TorchScript exporter handles the spectrogram variant, but cannot translate
``torch.fft.rfft`` (no ONNX symbolic for ``aten::fft_rfft``), and it is deprecated since
PyTorch 2.9. The fbank's power spectrum becomes ONNX's ``DFT`` operator; files are opset 18 or later.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from . import __version__
from .features import PREEMPHASIS, FeatureConfig, _mel_banks, _window, frame_geometry
from .loading import Loaded
from .model import FINETUNE_TASKS, ASTModel
from .predict import resolve_activation

# The exporter's own opset in torch 2.11; higher ones go through ONNX's version converter. The
# DFT operator exists from opset 17, but converting these graphs down to 17 fails (a Reduce
# node's axes), so 18 is the lowest.
DEFAULT_OPSET = 18
MIN_OPSET = 18
# A protobuf file holds at most 2 GiB: larger weights go to a ``.data`` file beside the model.
_EMBEDDED_WEIGHTS_LIMIT = 1_800_000_000


class WaveformFeatures(nn.Module):
    """(B, samples) waveform -> (B, target_length, num_mel_bins) normalized model input.

    The numbers of :class:`ssast.features.FeatureExtractor` on a (B, samples) tensor (the
    recipe's Kaldi fbank, zero padding or cropping, ``(x - mean) / (2 * std)``), written with
    operations that export to ONNX with a dynamic number of samples:

    - the clip's mean is taken over all its samples; the clip is then zero-extended and cut to
      exactly the samples that ``target_length`` frames span, and framed by one gather with a
      constant (target_length, window) index. Every shape after that is static, whatever the
      clip length: no data-dependent frame count, no loop, no strided view.
    - frames the clip does not fill (their last sample lies past its end) are set to 0 before
      normalization, which is the recipes' zero padding of a short clip's fbank.
    - the window and mel banks are buffers computed once, by the same functions as the fbank's.

    A clip shorter than one frame (where the extractor raises) gives padding frames only.
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        c = config
        size, shift, fft_size = frame_geometry(c.sample_rate, c.frame_length_ms, c.frame_shift_ms)
        self.config, self.fft_size = c, fft_size
        self.span = (c.target_length - 1) * shift + size  # samples covered by target_length frames
        index = torch.arange(c.target_length)[:, None] * shift + torch.arange(size)  # (L, W)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("window", _window(c.window, size, None, torch.float32), persistent=False)
        banks = _mel_banks(c.num_mel_bins, fft_size, float(c.sample_rate), torch.device("cpu"), torch.float32)
        self.register_buffer("banks", banks, persistent=False)  # (K, M)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = wave - wave.mean(dim=-1, keepdim=True)  # (B, S): the clip's mean removed
        zeros = x.new_zeros(x.shape[0], self.span)
        x = torch.cat([x, zeros], dim=1)[:, :self.span]  # (B, span), zero-extended or cropped
        filled = torch.cat([torch.ones_like(wave), zeros], dim=1)[:, :self.span]  # (B, span): 1 on real samples
        real = filled[:, self.index[:, -1]] > 0  # (B, L): frames whose last sample is real
        frames = x[:, self.index]  # (B, L, W)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # Kaldi's remove_dc_offset
        # Preemphasis x[j] - 0.97 x[j-1], the first sample its own predecessor; the fbank's rounding.
        pre = torch.cat([frames[..., :1] - PREEMPHASIS * frames[..., :1],
                         frames[..., 1:] - PREEMPHASIS * frames[..., :-1]], dim=-1)  # (B, L, W)
        spec = torch.fft.rfft(pre * self.window, n=self.fft_size)  # (B, L, K), zero-padded to the FFT size
        power = spec.real.square() + spec.imag.square()
        mel = (power @ self.banks).clamp_min(torch.finfo(torch.float32).eps).log()  # (B, L, M)
        mel = torch.where(real[..., None], mel, 0.0)
        return (mel - c.mean) / (2 * c.std)


class _Logits(nn.Module):
    """A fine-tuned model as a one-input, one-output module: (spectrogram or waveform) -> logits."""

    def __init__(self, model: ASTModel, task: str, features: WaveformFeatures | None):
        super().__init__()
        self.model, self.task, self.features = model, task, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.features is not None:
            x = self.features(x)  # (B, L, M)
        return self.model(x, self.task)  # (B, label_dim)


def export_metadata(loaded: Loaded, task: str, with_features: bool) -> dict[str, str]:
    """The ``metadata_props`` written into the file: every value a string, JSON where structured."""
    cfg, features, labels = loaded.config, loaded.features, loaded.label_names()
    activation = resolve_activation("auto", loaded.multilabel)
    source = "checkpoint" if loaded.multilabel is not None else "default (no multi-label record: softmax)"
    if with_features:
        shape = ["batch", "samples"]
        desc = f"mono waveform at {features.sample_rate} Hz, float in [-1, 1]"
    else:
        shape = ["batch", cfg.input_tdim, cfg.input_fdim]
        desc = "normalized log-mel fbank (batch, frames, mel bins): (fbank - mean) / (2 * std)"
    return {
        "input": "waveform" if with_features else "spectrogram",
        "input_shape": json.dumps(shape),
        "input_description": desc,
        "output": "logits",
        "output_shape": json.dumps(["batch", cfg.label_dim]),
        "task": task,
        "labels": json.dumps([str(n) for n in labels]),
        "activation": activation,
        "activation_source": source,
        "features": json.dumps(features.to_dict()),
        "model": json.dumps(cfg.to_dict()),
        "ssast_version": __version__,
    }


def _require_exporter() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs the onnx and onnxscript packages: pip install 'onnx==1.23.2' "
                          "'onnxscript==0.7.2' (or the package's [onnx] extra)") from None


def _check_model(model: ASTModel, task: str | None) -> str:
    if not isinstance(model, ASTModel):
        raise TypeError(f"expected an ssast ASTModel, got {type(model).__name__}")
    if model.config.stage != "finetune" or not hasattr(model, "mlp_head"):
        raise ValueError("cannot export a pretraining-stage model to ONNX: it has no classification head "
                         "(mlp_head). Export a fine-tuned model (fine-tune it first, e.g. with ssast finetune).")
    task = task or model.config.default_task
    if task not in FINETUNE_TASKS:
        raise ValueError(f"task must be one of {', '.join(FINETUNE_TASKS)}, got {task!r}")
    return task


def export_onnx(loaded: Loaded, path: str | os.PathLike, *, with_features: bool = False, task: str | None = None,
                opset: int = DEFAULT_OPSET, batch_size: int | None = None,
                num_samples: int | None = None) -> Path:
    """Write a loaded fine-tuned model (:func:`ssast.load`) as an ONNX file at ``path``; returns the path.

    ``with_features``: the waveform variant (fbank inside, with the model's feature settings)
    instead of the spectrogram one. ``task``: ``ft_avgtok`` or ``ft_cls`` (default: the
    model's). The label names (``LABEL_<i>`` for a model without names), feature settings and
    activation go into the file's metadata. ``batch_size`` / ``num_samples``: fix the batch or
    the waveform length in the graph (default None: dynamic). Raises ValueError for a
    pretraining-stage model.
    """
    model = loaded.model
    task = _check_model(model, task)
    _require_exporter()
    cfg, features = model.config, loaded.features
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET}, got {opset}")
    for name, value in (("batch_size", batch_size), ("num_samples", num_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer or None (dynamic), got {value}")
    if num_samples is not None and not with_features:
        raise ValueError("num_samples fixes the waveform length: it is for the waveform variant (with_features=True)")

    device = next(model.parameters()).device
    front = WaveformFeatures(features).to(device) if with_features else None
    module = _Logits(model, task, front)
    # An example batch of 2 clips keeps the batch symbolic (torch.export specializes sizes 0 and 1).
    b = batch_size or 2
    if with_features:
        # the length spanned by the model's input: neither padding nor cropping is baked in
        example = torch.zeros(b, num_samples or front.span, device=device)
        example.normal_(0, 0.1, generator=torch.Generator(device).manual_seed(0))
        dims = {0: torch.export.Dim("batch") if batch_size is None else None,
                1: torch.export.Dim("samples", min=1) if num_samples is None else None}
        input_name = "waveform"
    else:
        example = torch.randn(b, cfg.input_tdim, cfg.input_fdim, device=device,
                              generator=torch.Generator(device).manual_seed(0))
        dims = {0: torch.export.Dim("batch") if batch_size is None else None}
        input_name = "spectrogram"
    dynamic = {"x": {k: v for k, v in dims.items() if v is not None}}

    was_training = model.training
    module.eval()
    try:
        program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                                    input_names=[input_name], output_names=["logits"],
                                    dynamic_shapes=dynamic if dynamic["x"] else None)
    finally:
        model.train(was_training)

    got = program.model.opset_imports.get("", None)
    if got != opset:
        raise ValueError(f"the exporter could not convert the model to opset {opset} (it has opset {got})")
    meta = export_metadata(loaded, task, with_features)
    program.model.metadata_props.update(meta)
    program.model.doc_string = (f"ssast {task} classifier: {meta['input']} -> logits over {cfg.label_dim} labels; "
                                "see metadata_props for labels and feature settings")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=weight_bytes > _EMBEDDED_WEIGHTS_LIMIT)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """An exported file's metadata, JSON values decoded (``labels``, ``features``, ``model``, shapes)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    for key in ("labels", "features", "model", "input_shape", "output_shape"):
        if key in props:
            props[key] = json.loads(props[key])
    return props


__all__ = ["DEFAULT_OPSET", "WaveformFeatures", "export_metadata", "export_onnx", "read_metadata"]
