"""Pictures: a recording's detection timeline, and the masked-patch view of a pretrained model.

matplotlib is imported only when a picture is drawn, and only through its object-oriented API
on the Agg canvas (no ``pyplot``, no change of the user's backend). Install it with
``pip install matplotlib``.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from .features import FeatureConfig, FeatureExtractor, fbank, frame_geometry, num_frames, pad_or_crop
from .objectives import unpatchify
from .stream import Recording

# Distinct colours (matplotlib's tab10) for the score lines and their detections.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
CORRECT, MISSED = "#2ca02c", "#d62728"
MASK_GREY = 0.5
# Mask patches per clip in the SSAST recipes (400 of the 512 patches of a 128 x 1024 input).
RECIPE_MASK_RATIO = 400 / 512


def _figure(width: int, height: int, dpi: int, rows: int, height_ratios=None):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": height_ratios})[:, 0]
    return fig, axes


def _save(fig, out_png: str | os.PathLike) -> None:
    from pathlib import Path

    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=fig.dpi, format="png")


# Tick spacings (s) for long recordings: whole minutes and hours.
CLOCK_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _time_axis(ax, duration: float) -> None:
    """Seconds for short files; h:mm:ss on whole minutes or hours for long ones."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    if duration < 600:
        ax.set_xlabel("time (s)")
        return
    step = next((s for s in CLOCK_STEPS if duration / s <= 10), math.ceil(duration / 10 / 86400) * 86400)
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: f"{int(round(x)) // 3600}:{int(round(x)) // 60 % 60:02d}:{int(round(x)) % 60:02d}"))
    ax.set_xlabel("time (h:mm:ss)")


# ----------------------------------------------------------------------------- spectrogram of a file

def file_spectrogram(path: str | os.PathLike, config: FeatureConfig | None = None, max_columns: int = 2000,
                     block_seconds: float = 60.0) -> np.ndarray:
    """(columns, mel bins) log-mel of a whole recording, averaged over time to at most ``max_columns``.

    Streams the file (see :class:`ssast.stream.Recording`), so a recording of any length fits
    in memory; the fbank is the model's (unnormalized), computed block by block on frames that
    continue across blocks.
    """
    c = config or FeatureConfig()
    size, shift, _ = frame_geometry(c.sample_rate, c.frame_length_ms, c.frame_shift_ms)
    with Recording(path, c.sample_rate, block_seconds) as rec:
        total_frames = max(1, 1 + (rec.num_samples - size) // shift)
        pool = max(1, math.ceil(total_frames / max_columns))
        cols, carry, pending = [], torch.zeros(0), []
        for block in rec.blocks():
            carry = torch.cat([carry, block])
            n = 0 if carry.numel() < size else 1 + (carry.numel() - size) // shift
            if n:
                feats = fbank(carry[:(n - 1) * shift + size], c.sample_rate, c.num_mel_bins,
                              frame_length_ms=c.frame_length_ms, frame_shift_ms=c.frame_shift_ms, window=c.window)
                pending.append(feats)
                carry = carry[n * shift:]  # the next frame starts here
            frames = torch.cat(pending) if pending else torch.zeros(0, c.num_mel_bins)
            whole = frames.shape[0] // pool * pool
            if whole:
                cols.append(frames[:whole].reshape(-1, pool, c.num_mel_bins).mean(dim=1))
            pending = [frames[whole:]] if whole < frames.shape[0] else []
        if pending and pending[0].shape[0]:
            cols.append(pending[0].mean(dim=0, keepdim=True))
    if not cols:
        return np.zeros((1, c.num_mel_bins), dtype=np.float32)
    return torch.cat(cols).numpy()


# ----------------------------------------------------------------------------- detection timeline

def _as_arrays(result):
    """(starts, ends, labels, detections, threshold, duration, name, series getter) of a FileResult or its dict."""
    if isinstance(result, dict):  # a file entry of the JSON output
        wins = result["windows"]
        starts = np.array([w["start"] for w in wins], dtype=np.float64)
        ends = np.array([w["end"] for w in wins], dtype=np.float64)
        dets = [(d["label"], d["start"], d["end"]) for d in result.get("detections", [])]
        labels = list(result["summary"]["labels"])
        maxima = {k: v.get("max_score", 0.0) for k, v in result["summary"]["labels"].items()}

        def series(name):
            out = np.full(len(wins), np.nan)
            for i, w in enumerate(wins):
                for t in w["top"]:
                    if t["label"] == name:
                        out[i] = t["score"]
            return out

        return starts, ends, labels, dets, result.get("threshold"), result["duration"], result["path"], series, maxima
    starts, ends = result.start_times, result.end_times
    dets = [(d.label, d.start, d.end) for d in result.detections]
    maxima = dict(zip(result.labels, result.max_score.tolist()))
    index = {n: i for i, n in enumerate(result.labels)}

    def series(name):
        i = index[name]
        if result.scores is not None:
            return result.scores[:, i].astype(np.float64)
        # Only the top-k scores are known: gaps where the label was not among them.
        hit = result.top_index == i
        out = np.full(len(starts), np.nan)
        rows, cols = np.nonzero(hit)
        out[rows] = result.top_score[rows, cols]
        return out

    return starts, ends, list(result.labels), dets, result.threshold, result.duration, result.path, series, maxima


def timeline_figure(result, spectrogram: np.ndarray | torch.Tensor | None = None, labels: Sequence[str] | None = None,
                    *, top: int = 5, threshold: float | None = None, width: int = 1400, height: int = 800,
                    dpi: int = 100, title: str | None = None):
    """The matplotlib Figure of :func:`plot_timeline` (Agg canvas), without saving it."""
    from matplotlib.patches import Patch

    starts, ends, all_labels, dets, thr, duration, name, series, maxima = _as_arrays(result)
    thr = threshold if threshold is not None else thr
    if labels is None:
        detected = {d[0] for d in dets}
        labels = sorted(all_labels, key=lambda n: (n not in detected, -maxima.get(n, 0.0)))[:top]
    else:
        unknown = [n for n in labels if n not in all_labels]
        if unknown:
            raise ValueError(f"unknown label(s) {', '.join(map(str, unknown))}")
    rows = 2 if spectrogram is not None else 1
    fig, axes = _figure(width, height, dpi, rows, [3, 2] if rows == 2 else None)
    end = max(float(duration), float(ends.max()) if len(ends) else 0.0) or 1.0
    if spectrogram is not None:
        spec = np.asarray(spectrogram, dtype=np.float32)
        ax = axes[0]
        lo, hi = np.percentile(spec, [2, 99.5]) if spec.size else (0, 1)
        im = ax.imshow(spec.T, origin="lower", aspect="auto", extent=(0, float(duration) or end, 0, spec.shape[1]),
                       cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_ylabel("mel bin")
        # In the right margin that the legend below makes, so that the two panels keep one width.
        fig.colorbar(im, cax=ax.inset_axes([1.01, 0.0, 0.012, 1.0]), label="log-mel energy")
    ax = axes[-1]
    centres = (starts + ends) / 2
    handles, texts = [], []
    for j, label in enumerate(labels):
        color = COLORS[j % len(COLORS)]
        y = series(label)
        (line,) = ax.plot(centres, y, color=color, lw=1.2, marker="." if len(centres) < 200 else None, ms=4)
        handles.append(line)
        texts.append(str(label)[:40])
        for lab, s, e in dets:
            if lab == label:
                ax.axvspan(s, e, color=color, alpha=0.15, lw=0)
                if rows == 2:  # a bar per label along the top of the spectrogram
                    axes[0].axvspan(s, e, ymin=0.97 - 0.03 * j, ymax=1.0 - 0.03 * j, color=color, lw=0)
    rule = f"score \u2265 {thr:g}" if thr is not None else "above the threshold"
    if thr is not None:
        handles.append(ax.axhline(thr, color="black", ls="--", lw=1))
        texts.append(f"threshold {thr:g}")
    if labels:
        where = ", and a bar along\nthe top of the spectrogram" if rows == 2 else ""
        handles.append(Patch(facecolor="0.5", alpha=0.35, lw=0))
        texts.append(f"detected ({rule}):\nshaded in the label's colour{where}")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, end)
    ax.set_ylabel("score")
    _time_axis(ax, end)
    ax.grid(alpha=0.3)
    if handles:
        # Handles and texts passed explicitly: labels such as "_silence_" would be dropped otherwise.
        ax.legend(handles, texts, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    axes[0].set_title(title if title is not None else os.path.basename(str(name)), fontsize="medium")
    return fig


def plot_timeline(result, out_png: str | os.PathLike, spectrogram: np.ndarray | torch.Tensor | None = None,
                  labels: Sequence[str] | None = None, *, top: int = 5, threshold: float | None = None,
                  width: int = 1400, height: int = 800, dpi: int = 100, title: str | None = None):
    """Per-file detection timeline as a PNG of ``width`` x ``height`` pixels; returns the Figure.

    ``result``: a :class:`ssast.predict.FileResult` (full scores when it kept them, else its
    top-k scores, with gaps) or a file entry of the JSON output. Draws, against time, each
    label's score per window (at the window's centre), the threshold, and the label's
    detections shaded; above it, when given, the file's ``spectrogram`` (columns, mel bins)
    spanning the whole file (e.g. from :func:`file_spectrogram`) with a colorbar, and a bar per
    detection along its top. The legend names every label drawn, the threshold, and what the
    shading and bars mean. ``labels``: the labels to draw; default: up to ``top`` labels,
    detected ones first, by their highest score.
    """
    fig = timeline_figure(result, spectrogram, labels, top=top, threshold=threshold, width=width, height=height,
                          dpi=dpi, title=title)
    _save(fig, out_png)
    return fig


# ----------------------------------------------------------------------------- masked patches

PAD_GREY = 0.88
PADDING_LABEL = "padding (zeros past the end of the clip)"


def _feature_config(model, features) -> FeatureConfig:
    return FeatureConfig.for_model(model.config, features)


def _features_for(model, x, features, sample_rate: int) -> tuple[torch.Tensor, int, float]:
    """(1, input_tdim, input_fdim) model input from a waveform or from features, the frames of it
    that hold the clip (the rest is padding), and the frame shift in seconds."""
    cfg = model.config
    config = _feature_config(model, features)
    shift = config.frame_shift_ms / 1000
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 1:  # a waveform
        g = math.gcd(sample_rate, config.sample_rate)
        resampled = -(-x.numel() * (config.sample_rate // g) // (sample_rate // g))  # torchaudio's output length
        real = num_frames(resampled, config.sample_rate, config.frame_length_ms, config.frame_shift_ms)
        feats = FeatureExtractor(config, resample=True)(x, sample_rate=sample_rate)  # (1, T, F)
        return feats, min(real, cfg.input_tdim), shift
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"expected a waveform (samples,) or features (frames, mel bins), got shape {tuple(x.shape)}")
    return pad_or_crop(x, cfg.input_tdim), min(x.shape[1], cfg.input_tdim), shift


def _mark_padding(ax, start: float, end: float, height: float, text: bool) -> None:
    """Hatch the padded span [start, end) s of a panel, labelled, so it does not read as signal."""
    from matplotlib.patches import Rectangle

    if end <= start:
        return
    ax.add_patch(Rectangle((start, 0), end - start, height, fill=False, hatch="//", edgecolor="0.55", lw=0,
                           label=PADDING_LABEL, zorder=3))
    if text:
        narrow = (end - start) < 0.12 * end
        ax.text((start + end) / 2, height / 2, "padding", rotation=90 if narrow else 0, ha="center", va="center",
                fontsize="medium", color="0.25", zorder=4,
                bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.6", alpha=0.9))


@torch.no_grad()
def mask_figure(model, waveform_or_features, *, mask_patch: int | None = None, cluster: bool | None = None,
                seed: int = 0, generator: torch.Generator | None = None, features: FeatureConfig | dict | None = None,
                sample_rate: int = 16000, width: int = 1400, height: int = 900, dpi: int = 100,
                title: str | None = None):
    """(Figure, the model's result) of :func:`plot_mask_visualization`, without saving it."""
    from matplotlib.patches import Rectangle

    cfg = model.config
    if cfg.stage != "pretrain":
        raise ValueError("the masked-patch view needs a pretraining-stage model (it has the masked-patch heads)")
    device = next(model.parameters()).device
    x, real, shift = _features_for(model, waveform_or_features, features, sample_rate)
    x = x.to(device)  # (1, T, F)
    if mask_patch is None:
        mask_patch = max(1, round(cfg.num_patches * RECIPE_MASK_RATIO))
    if cluster is None:
        cluster = cfg.f_dim > 1
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        vis = model(x, task="visualize_mask", mask_patch=mask_patch, cluster=cluster, generator=generator)
    finally:
        model.train(was_training)

    size = (cfg.f_dim * cfg.fshape, cfg.t_dim * cfg.tshape)
    n, k = cfg.num_patches, cfg.patch_dim
    masked = torch.zeros(1, n, device=vis.mask_index.device).scatter(1, vis.mask_index, 1.0)
    hit = torch.zeros(1, n, device=vis.mask_index.device).scatter(1, vis.mask_index, vis.correct.float())
    masked_px = unpatchify(masked[..., None].expand(-1, -1, k), size, cfg.fshape, cfg.tshape)[0, 0].bool().cpu()
    spec = x[0].T[: size[0], : size[1]].float().cpu().numpy()  # (F, T) as the model sees it, on the patch grid
    grid_hit = hit.reshape(cfg.f_dim, cfg.t_dim).cpu()
    grid_mask = masked.reshape(cfg.f_dim, cfg.t_dim).cpu()
    real = min(real, size[1])
    padded = np.zeros(spec.shape, dtype=bool)
    padded[:, real:] = True  # padded frames hold one constant value: drawn as padding, not as signal
    seconds = size[1] * shift

    fig, axes = _figure(width, height, dpi, 3)
    lo, hi = np.percentile(spec[:, :real], [1, 99.5]) if real else (0.0, 1.0)  # the colour scale of the clip only
    show = dict(origin="lower", aspect="auto", vmin=lo, vmax=hi, interpolation="nearest",
                extent=(0, seconds, 0, size[0]))
    magma = _cmap_with_bad("magma", (PAD_GREY,) * 3)
    im = axes[0].imshow(np.ma.masked_array(spec, mask=padded), **show, cmap=magma)
    clip = f"{real} frames, {real * shift:.2f} s" + (f"; zero-padded to {seconds:.2f} s" if real < size[1] else "")
    axes[0].set_title(f"input spectrogram ({clip})", fontsize="medium", loc="left")
    axes[1].imshow(np.ma.masked_array(spec, mask=padded), **show, cmap=magma)
    # Masked patches on top, in a grey of their own, over the clip and the padding alike.
    overlay = np.zeros((*spec.shape, 4))
    overlay[masked_px.numpy()] = (MASK_GREY, MASK_GREY, MASK_GREY, 1.0)
    axes[1].imshow(overlay, **show)
    m = int(vis.mask_index.shape[1])
    axes[1].set_title(f"masked input: {m} of {n} patches ({'clusters' if cluster else 'uniform'})",
                      fontsize="medium", loc="left")
    # Grey underneath, so that the green and red marks stand out from the colour map.
    axes[2].imshow(np.ma.masked_array(spec, mask=padded), **show, cmap=_cmap_with_bad("gray", (PAD_GREY,) * 3))
    fi, ti = torch.nonzero(grid_mask, as_tuple=True)
    for f_, t_ in zip(fi.tolist(), ti.tolist()):
        ok = bool(grid_hit[f_, t_])
        axes[2].add_patch(Rectangle((t_ * cfg.tshape * shift, f_ * cfg.fshape), cfg.tshape * shift, cfg.fshape,
                                    facecolor=CORRECT if ok else MISSED, alpha=0.5, edgecolor="white", lw=0.3))
    correct = int(vis.correct.sum())
    axes[2].set_title(f"masked patches identified by the masked-patch classifier: {correct} of {m} "
                      f"({100 * correct / max(m, 1):.0f}%; green identified, red missed)", fontsize="medium", loc="left")
    for i, ax in enumerate(axes):
        ax.set_ylabel("mel bin")
        _mark_padding(ax, real * shift, seconds, size[0], text=i == 0)
    axes[-1].set_xlim(0, seconds)
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes[:2], label="normalized log-mel", pad=0.01, fraction=0.03)
    if title:
        fig.suptitle(title)
    return fig, vis


def plot_mask_visualization(model, waveform_or_features, out_png: str | os.PathLike, *, mask_patch: int | None = None,
                            cluster: bool | None = None, seed: int = 0, generator: torch.Generator | None = None,
                            features: FeatureConfig | dict | None = None, sample_rate: int = 16000,
                            width: int = 1400, height: int = 900, dpi: int = 100, title: str | None = None):
    """The masked-patch view of a pretraining-stage model, as a PNG; returns the model's result.

    Three panels over the same time axis, in seconds: the input spectrogram; the input with the
    masked patches greyed out; and the input with each masked patch outlined in green when the
    masked-patch classifier picked it out among the clip's masked patches, red when not. The
    frames past the end of a clip shorter than the model's input (zero-padded, as the recipes
    pad) are hatched, light grey and labelled as padding, and kept out of the colour scale.
    ``waveform_or_features``: a 1-D waveform at ``sample_rate`` (features computed with
    ``features``, the model's own, or AudioSet defaults) or normalized features (frames, mel
    bins). ``mask_patch``: masked patches (default: the recipes' ratio, 400 of 512);
    ``cluster``: square clusters (default for patch models) or uniform positions (frame models).
    """
    fig, vis = mask_figure(model, waveform_or_features, mask_patch=mask_patch, cluster=cluster, seed=seed,
                           generator=generator, features=features, sample_rate=sample_rate, width=width,
                           height=height, dpi=dpi, title=title)
    _save(fig, out_png)
    return vis


def _cmap_with_bad(name: str, color):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=color)
