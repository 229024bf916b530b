"""Webdataset tar shards: a writer, and a streaming reader built from small stages.

A shard is a tar file of samples, each two members under one key: the clip, in the format
chosen when the shards were written, and ``KEY.json`` (``labels``: list of label ids,
``duration`` in seconds, ``sample_rate``, ``source``: the original file). The formats, all of
mono audio rounded to 16 bits at the dataset's sample rate:

- ``flac`` (the default): ``KEY.flac``, 16-bit FLAC. The smallest (lossless compression);
  decoding costs about as much CPU as the model's features.
- ``pcm16``: ``KEY.pcm``, the raw samples, little-endian int16, at the JSON's ``sample_rate``;
  read with ``numpy.frombuffer``, no decoder: several times FLAC's feed rate, for 1.2x its
  bytes on the benchmark's tones in noise (more on audio FLAC compresses well, such as speech).
- ``fbank``: ``KEY.fbank``, the precomputed Kaldi log-mel of those samples
  (:func:`ssast.features.fbank`, unnormalized), little-endian float16 (frames, mel bins),
  row-major; the JSON's ``fbank`` holds its settings (``sample_rate``, ``num_mel_bins``,
  ``frame_length_ms``, ``frame_shift_ms``, ``window``, ``frames``). No feature cost at all; the
  features are fixed when written (no waveform augmentation, no other mel settings).

A labeled set has a ``labels.csv`` in the official label CSV format (``index,mid,display_name``)
beside its shards, and every set a ``manifest.json`` (shards, clip counts, the brace pattern,
the format).

The reader (:func:`shard_pipeline`) is a ``webdataset.DataPipeline``, one stage per line:

    shard list (brace patterns; shuffled per epoch for training, or resampled endlessly)
    -> split by node -> split by worker -> tar members to samples (errors counted, run goes on)
    -> shuffle buffer -> decode (FLAC, 16-bit PCM or fbank) and resample -> crop or pad
    -> multi-hot target -> batch

Each stage after the shard list is a plain generator function over an iterator of dicts. Any
shard set is read, whatever its format; several sources mix by weight (:func:`mix_sources`,
:func:`read_mixture`), in any formats. Unlabeled sources (pretraining) need no label file:
without ``labels`` no target is made.

Batches (``batch_size``) are dicts of:

- ``wave`` (B, N) float32 in [-1, 1] and ``length`` (B,) samples of real audio per row, from
  audio formats: features are computed from them on the training device (with
  ``wave_dtype=torch.int16``, ``wave`` holds the 16-bit samples, to be scaled by 1 / 32768 on
  the device: half the bytes to move);
- or, when the batch holds precomputed features (``fbank`` sources), ``fbank`` (B, T, F)
  float16, unnormalized log-mel, zero-padded past each row's ``frames`` (B,) real frames, as
  the recipes pad: the model input is ``(fbank.float() - mean) / (2 * std)`` on the device. A
  batch is one or the other: in a mixture of ``fbank`` and audio sources every batch carries
  ``fbank`` (when a source's ``manifest.json`` names the format, or with
  ``fbank_batches=True``), the waves' fbank computed in the reader with the same settings;
- ``target`` (B, C) with labels; lists of ``path``, ``meta`` and ``dataset`` (a mixture's
  source names).
"""
from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import random
import re
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import webdataset as wds
from tqdm import tqdm

from .audio import DEFAULT_SAMPLE_RATE, MIN_SECONDS, AudioError, load_audio, to_mono_resampled
from .datasets import PCM16_SCALE, SkipCounter, collate, multi_hot
from .features import FeatureConfig, fbank, num_frames
from .sources import Source, SourceError, read_label_csv, read_source, validate

log = logging.getLogger(__name__)

SHARD_FORMATS = ("flac", "pcm16", "fbank")
AUDIO_KEYS = ("flac", "wav", "ogg", "oga", "opus", "mp3", "aiff", "aif", "au", "audio")  # read by libsndfile
PCM_KEY = "pcm"  # raw 16-bit little-endian mono samples; the rate is the JSON's sample_rate
FBANK_KEY = "fbank"  # raw little-endian float16 (frames, mel bins) log-mel; settings in the JSON's fbank
FBANK_SETTINGS = ("sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "window")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's names of metadata members
_BLOCK = tarfile.BLOCKSIZE  # 512: a member's header, and the unit its data is padded to
_RECORD = tarfile.RECORDSIZE  # 10240: a finished tar file is padded to a multiple of this

# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardSummary:
    """What :func:`write_shards` wrote: shard paths with their clip counts and sizes, skipped inputs."""

    outdir: str
    pattern: str | None  # brace pattern of all shards, for the reader
    shards: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # bytes
    seconds: float = 0.0
    sample_rate: int = DEFAULT_SAMPLE_RATE
    audio_format: str = "flac"
    labels_csv: str | None = None
    num_labels: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input path, reason)

    @property
    def num_clips(self) -> int:
        return sum(self.counts)

    def format(self, limit: int = 20) -> str:
        lines = [f"wrote {len(self.shards)} shard{'s' if len(self.shards) != 1 else ''} to {self.outdir}"
                 + (f" ({os.path.basename(self.pattern)})" if self.pattern else "")
                 + f": {self.num_clips} clips, {self.seconds / 3600:.2f} h of audio at {self.sample_rate} Hz "
                 f"as {self.audio_format}, {sum(self.sizes) / 1e6:.1f} MB"]
        if self.labels_csv:
            lines.append(f"labels: {self.labels_csv} ({self.num_labels} labels)")
        else:
            lines.append("labels: none (unlabeled)")
        lines.append(f"skipped: {len(self.skipped)}")
        lines += [f"  {p}: {reason}" for p, reason in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more (all listed in manifest.json)")
        return "\n".join(lines)

    __str__ = format


def _tar_member_bytes(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _tar_file_bytes(members_bytes: int) -> int:
    # Two zero blocks end the archive, then tarfile pads to a whole record.
    return -(-(members_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


def _safe_key(index: int, path: str) -> str:
    # webdataset splits a member name at the first dot of its base name: keys must have none.
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:48]
    return f"{index:08d}_{stem}"


def pcm16(wave: torch.Tensor) -> np.ndarray:
    """(samples,) float waveform -> int16 samples, rounded and clipped as libsndfile writes
    16-bit FLAC from floats (x * 32768, to nearest, clipped to [-32768, 32767]); reading them
    back as ``x / 32768`` gives the samples the FLAC shards give."""
    x = wave.detach().cpu().float().numpy()
    return np.clip(np.rint(x * np.float32(32768)), -32768, 32767).astype(np.int16)


def _fbank16(pcm: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """int16 samples -> (frames, mel bins) unnormalized log-mel as float16, from the same 16-bit
    samples that the FLAC and PCM formats store."""
    wave = torch.from_numpy(pcm).float().mul_(PCM16_SCALE)  # (samples,)
    c = features
    feats = fbank(wave, c.sample_rate, c.num_mel_bins, frame_length_ms=c.frame_length_ms,
                  frame_shift_ms=c.frame_shift_ms, window=c.window)  # (T, F)
    return feats.to(torch.float16).numpy()


def _fbank_settings(features: FeatureConfig) -> dict:
    """What a precomputed fbank depends on (mean, std and target length are applied when read)."""
    return {k: getattr(features, k) for k in FBANK_SETTINGS}


def _encode_item(path: str, sample_rate: int, audio_format: str = "flac",
                 features: FeatureConfig | None = None) -> tuple[dict | None, dict, str | None]:
    """({member extension: bytes}, JSON fields, None), or (None, {}, problem) for an unreadable file."""
    try:
        wave = load_audio(path, sample_rate)
        samples = pcm16(wave)
        meta = {"duration": samples.shape[0] / sample_rate}
        if audio_format == "flac":
            buf = io.BytesIO()
            sf.write(buf, samples, sample_rate, format="FLAC", subtype="PCM_16")  # int16 in: lossless
            return {"flac": buf.getvalue()}, meta, None
        if audio_format == "pcm16":
            return {"pcm": samples.astype("<i2").tobytes()}, meta, None
        feats = _fbank16(samples, features)
        meta["fbank"] = dict(_fbank_settings(features), frames=feats.shape[0])
        return {"fbank": feats.astype("<f2").tobytes()}, meta, None
    except AudioError as e:
        return None, {}, e.problem
    except (OSError, RuntimeError, ValueError) as e:  # anything else a broken file may raise
        return None, {}, f"unreadable audio ({type(e).__name__}: {e})"


def _init_encoder_worker() -> None:
    torch.set_num_threads(1)


def _encoded(items, sample_rate: int, num_workers: int, audio_format: str,
             features: FeatureConfig | None) -> Iterator[tuple[dict | None, dict, str | None]]:
    paths = [it.path for it in items]
    encode = functools.partial(_encode_item, sample_rate=sample_rate, audio_format=audio_format, features=features)
    if num_workers <= 0:
        for p in paths:
            yield encode(p)
        return
    import multiprocessing

    # forkserver: the parent has torch's thread pools running, which fork does not copy safely.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # import once in the server, not in every worker
    with ctx.Pool(num_workers, initializer=_init_encoder_worker) as pool:
        yield from pool.imap(encode, paths, chunksize=4)


def _existing_outputs(outdir: Path, prefix: str) -> list[Path]:
    shard_re = re.compile(re.escape(prefix) + r"-\d{6}\.tar$")
    return sorted(p for p in outdir.iterdir() if shard_re.match(p.name) or p.name in ("labels.csv", "manifest.json"))


def write_label_csv(path: str | os.PathLike, labels: list[str], display_names: list[str] | None = None) -> None:
    """The official label CSV: header ``index,mid,display_name``, one row per label."""
    names = display_names or labels
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        w.writerows([i, lab, name] for i, (lab, name) in enumerate(zip(labels, names)))


def write_shards(source_or_path: Source | str | os.PathLike, outdir: str | os.PathLike, max_size_mb: float = 256.0,
                 max_count: int | None = None, sample_rate: int = DEFAULT_SAMPLE_RATE, prefix: str = "shard",
                 label_csv: str | os.PathLike | None = None, labeled: bool | None = None, shuffle: bool = True,
                 seed: int = 0, num_workers: int = 0, overwrite: bool = False, progress: bool = False,
                 audio_format: str = "flac", features: FeatureConfig | None = None) -> ShardSummary:
    """Pack a JSON datafile, CSV or folder into tar shards ``OUTDIR/PREFIX-000000.tar``, ...

    Each clip is read, downmixed, resampled to ``sample_rate``, rounded to 16 bits and stored in
    ``audio_format`` (see the module docstring): ``flac`` (smallest; the default), ``pcm16``
    (raw samples: no decoding cost) or ``fbank`` (precomputed float16 log-mel with the settings
    of ``features``, default :class:`ssast.features.FeatureConfig` at ``sample_rate``: no
    feature cost), with a JSON of its labels, duration, sample rate and source path. A shard is closed before it would pass
    ``max_size_mb`` megabytes (only a single clip larger than that makes a larger shard) or
    ``max_count`` clips. ``shuffle`` writes the clips in a seeded random order, so that each
    shard holds a mix of classes. Missing, mislabeled and unreadable inputs are skipped and
    listed in the summary (and in ``manifest.json``). ``num_workers`` > 0 decodes in that many
    processes. Existing shards with this prefix are an error unless ``overwrite``.
    """
    source = source_or_path if isinstance(source_or_path, Source) else \
        read_source(source_or_path, label_csv=label_csv, labeled=labeled)
    if not prefix or "/" in prefix or os.sep in prefix:
        raise ValueError(f"shard prefix {prefix!r}: must be a non-empty file name part")
    max_bytes = int(max_size_mb * 1e6)
    if max_bytes <= 0:
        raise ValueError(f"max_size_mb must be positive, got {max_size_mb}")
    max_count = max_count or sys.maxsize
    if audio_format not in SHARD_FORMATS:
        raise ValueError(f"unknown shard format {audio_format!r}: expected one of {', '.join(SHARD_FORMATS)}")
    if audio_format == "fbank":
        features = features or FeatureConfig(sample_rate=sample_rate)
        if features.sample_rate != sample_rate:
            raise ValueError(f"features at {features.sample_rate} Hz for shards at {sample_rate} Hz")
    else:
        features = None
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    old = _existing_outputs(out, prefix)
    if old and not overwrite:
        raise SourceError(out, f"already holds shards or their files ({', '.join(p.name for p in old[:3])}"
                               f"{', ...' if len(old) > 3 else ''}); choose another folder, or overwrite them (--overwrite)")
    for p in old:
        p.unlink()

    report = validate(source, check_audio=False)  # missing files, unknown labels; audio checked on reading
    items = list(report.good)
    if shuffle:
        random.Random(seed).shuffle(items)
    summary = ShardSummary(outdir=str(out), pattern=None, sample_rate=sample_rate, skipped=list(report.bad),
                           audio_format=audio_format)

    writer = None
    shard_bytes = shard_count = 0
    mtime = int(time.time())
    bar = tqdm(total=len(items), unit="clip", desc="shards", disable=not progress, dynamic_ncols=True)
    try:
        encoded = _encoded(items, sample_rate, num_workers, audio_format, features)
        for index, (item, (members, fields, problem)) in enumerate(zip(items, encoded)):
            bar.update(1)
            if members is None:
                summary.skipped.append((item.path, problem))
                bar.set_postfix(skipped=len(summary.skipped), refresh=False)
                continue
            meta = {"labels": list(item.labels), "duration": fields.pop("duration"), "sample_rate": sample_rate,
                    "source": item.path, **fields}
            sample = {"__key__": _safe_key(index, item.path), **members,
                      "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
            record = sum(_tar_member_bytes(len(v)) for k, v in sample.items() if k != "__key__")
            if writer is None:
                # ShardWriter's own limits count payload bytes only and close a shard after it has
                # passed maxsize; the check below closes it before, counting tar headers and padding.
                # A whole-second mtime keeps members in plain ustar headers (a fractional one adds a
                # pax header to each), one 512-byte block each, as _tar_member_bytes counts.
                writer = wds.ShardWriter(str(out / (prefix.replace("%", "%%") + "-%06d.tar")), maxcount=max_count,
                                         maxsize=max_bytes, verbose=0, post=summary.shards.append, mtime=mtime)
            elif shard_count and (shard_count >= max_count or _tar_file_bytes(shard_bytes + record) > max_bytes):
                summary.counts.append(shard_count)
                writer.next_stream()
                shard_bytes = shard_count = 0
            writer.write(sample)
            shard_bytes += record
            shard_count += 1
            summary.seconds += meta["duration"]
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if shard_count:
        summary.counts.append(shard_count)
    summary.sizes = [os.path.getsize(p) for p in summary.shards]
    if summary.shards:
        last = len(summary.shards) - 1
        summary.pattern = str(out / f"{prefix}-{{000000..{last:06d}}}.tar") if last else summary.shards[0]
    if source.labeled:
        summary.labels_csv = str(out / "labels.csv")
        summary.num_labels = len(source.labels)
        write_label_csv(summary.labels_csv, source.labels, source.display_names)
    manifest = {"pattern": summary.pattern and os.path.basename(summary.pattern), "format": audio_format,
                **({"fbank": _fbank_settings(features)} if features is not None else {}),
                "shards": [{"name": os.path.basename(p), "clips": c, "bytes": b}
                           for p, c, b in zip(summary.shards, summary.counts, summary.sizes)],
                "clips": summary.num_clips, "seconds": summary.seconds, "sample_rate": sample_rate,
                "labels": "labels.csv" if source.labeled else None, "source": source.name,
                "skipped": [{"path": p, "reason": r} for p, r in summary.skipped]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    return summary


# ---------------------------------------------------------------------------------------------
# Reader: shard lists and mixtures
# ---------------------------------------------------------------------------------------------


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url[len("file://"):]
    if "://" in url or url.startswith("pipe:") or url == "-":
        return None
    return url


def expand_shards(spec, base: str | os.PathLike | None = None, check: bool = True) -> list[str]:
    """Shard urls from a brace pattern (``/data/as-{000000..000099}.tar``; ``::`` joins several),
    a folder (its ``*.tar`` files, sorted) or a list of these. Relative local paths are resolved
    against ``base``; ``check`` raises, naming them, if local shards are missing."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    parts = [part for s in specs for part in os.fspath(s).split("::")]
    urls: list[str] = []
    for s in parts:
        if base is not None and _local_path(s) == s and not os.path.isabs(s):
            s = os.path.join(base, s)
        if _local_path(s) == s and os.path.isdir(s):
            found = sorted(str(p) for p in Path(s).iterdir() if p.name.endswith((".tar", ".tar.gz", ".tgz")))
            if not found:
                raise SourceError(s, "folder holds no .tar shards")
            urls += found
        else:
            urls += wds.shardlists.expand_urls(s)
    if not urls:
        raise SourceError(spec, "no shards")
    if check:
        missing = [u for u in urls if (p := _local_path(u)) is not None and not os.path.isfile(p)]
        if missing:
            raise SourceError(spec, f"{len(missing)} of {len(urls)} shards not found: {', '.join(missing[:3])}"
                                    f"{', ...' if len(missing) > 3 else ''}")
    return urls


@dataclass
class MixSource:
    """One source of a mixture: a name, its shard urls (or ``files``: a JSON datafile, CSV or
    folder of audio read file by file), and its share of the samples (a weight)."""

    name: str
    shards: list[str]
    weight: float = 1.0
    files: str | None = None


def is_file_source(spec) -> bool:
    """A JSON datafile, CSV, or folder of audio (not a shard folder): read file by file."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    s = os.fspath(spec)
    if s.lower().endswith((".csv", ".tsv")):
        return True
    if s.lower().endswith(".json"):
        return not _is_mixture_file(s)
    return os.path.isdir(s) and not any(p.name.endswith((".tar", ".tar.gz", ".tgz")) for p in Path(s).iterdir())


def _is_mixture_file(path: str) -> bool:
    if not path.lower().endswith(".json"):
        return False
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and "sources" in obj


def _make_source(name: str, spec, weight: float, base=None, check: bool = True) -> MixSource:
    if isinstance(spec, (str, os.PathLike)) and "::" not in os.fspath(spec):
        s = os.fspath(spec)
        if base is not None and _local_path(s) == s and not os.path.isabs(s):
            s = os.path.join(base, s)
        if is_file_source(s):
            return MixSource(name, [], weight, files=s)
    return MixSource(name, expand_shards(spec, base=base, check=check), weight)


def read_mixture(path: str | os.PathLike, check: bool = True) -> list[MixSource]:
    """Read a mixture file ``{"sources": [{"name": ..., "shards": PATTERN or [...], "weight": w}, ...]}``.

    A source's ``shards`` may also be a JSON datafile, CSV or folder of audio, read file by file.
    Relative paths are resolved against the file's folder; weights need not sum to one.
    """
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(path, f"cannot read mixture file ({e})") from None
    entries = obj.get("sources") if isinstance(obj, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SourceError(path, 'not a mixture file: expected '
                                '{"sources": [{"name": ..., "shards": ..., "weight": ...}, ...]}')
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "shards" not in e:
            raise SourceError(path, f"source {i} has no 'shards'")
        weight = e.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise SourceError(path, f"source {i} ({e.get('name', '?')}): weight must be a positive number, "
                                    f"got {weight!r}")
        out.append(_make_source(str(e.get("name", f"source{i}")), e["shards"], float(weight), base=p.parent,
                                check=check))
    return out


def _manifest_format(source: MixSource) -> str | None:
    """The format in the manifest.json beside a source's first shard, if it is local and has one."""
    path = _local_path(source.shards[0]) if source.shards else None
    if path is None:
        return None
    try:
        return json.loads((Path(path).parent / "manifest.json").read_text(encoding="utf-8")).get("format", "flac")
    except (OSError, ValueError, AttributeError):
        return None


def _as_sources(shards) -> list[MixSource]:
    if isinstance(shards, (str, os.PathLike)) and _is_mixture_file(os.fspath(shards)):
        return read_mixture(shards)
    if isinstance(shards, (list, tuple)) and shards and all(isinstance(s, MixSource) for s in shards):
        return list(shards)
    if isinstance(shards, (list, tuple)) and shards and all(isinstance(s, tuple) and len(s) == 2 for s in shards):
        return [_make_source(os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else f"source{i}", spec, float(w))
                for i, (spec, w) in enumerate(shards)]
    name = os.path.basename(os.fspath(shards).rstrip("/")) if isinstance(shards, (str, os.PathLike)) else "shards"
    return [_make_source(name or "shards", shards, 1.0)]


# ---------------------------------------------------------------------------------------------
# Reader: random streams
# ---------------------------------------------------------------------------------------------


def _worker_tag() -> str:
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return f"{rank}/{worker}"


def _rng(seed) -> random.Random:
    """A random.Random from a seed (int or str, made distinct per rank and worker), a Random, or a
    zero-argument callable returning one; None draws fresh entropy."""
    if isinstance(seed, random.Random):
        return seed
    if callable(seed):
        return seed()
    if seed is None:
        return random.Random(os.urandom(16))
    # String seeds hash with SHA-512, the same in every process.
    return random.Random(f"{seed}/{_worker_tag()}")


class _Seeds:
    """The pipeline's seed and epoch, shared by its stages (and copied with them into workers).

    Streams depend on (seed, epoch, how many times the stage started this epoch), so that a
    pass repeated within an epoch differs and a repeated epoch is the same.
    """

    def __init__(self, seed: int | None):
        self.seed, self.epoch = seed, -1
        self.starts: dict[str, int] = {}

    def next_epoch(self) -> None:
        self.epoch += 1
        self.starts = {}

    def start(self, salt: str) -> int:
        self.starts[salt] = n = self.starts.get(salt, -1) + 1
        return n

    def shared(self, *salt) -> random.Random:
        """The same stream on every rank and worker: for shard orders, which are split afterwards."""
        return random.Random(f"{self.seed or 0}/{self.epoch}/" + "/".join(map(str, salt)))

    def local(self, *salt) -> random.Random:
        """A stream distinct per rank and worker."""
        if self.seed is None:
            return random.Random(os.urandom(16))
        return random.Random(f"{self.seed}/{self.epoch}/{_worker_tag()}/" + "/".join(map(str, salt)))


class _SeedSource:
    """Zero-argument callable for a stage's ``rng``: a new per-worker stream at each start."""

    def __init__(self, seeds: _Seeds, salt: str):
        self.seeds, self.salt = seeds, salt

    def __call__(self) -> random.Random:
        return self.seeds.local(self.salt, self.seeds.start(self.salt))


class ResampledShardList(torch.utils.data.IterableDataset):
    """Yields ``{"url": ...}`` endlessly, each shard drawn with replacement from the whole list,
    from a stream that depends on (seed, epoch, rank, worker, pass) only: every rank and worker
    draws its own shards, and a pipeline set to epoch e draws what a fresh one set to e draws."""

    def __init__(self, urls: list[str], seeds: _Seeds | None = None, salt: str = ""):
        super().__init__()
        if not urls:
            raise ValueError("resampling needs at least one shard")
        self.urls, self.seeds, self.salt = list(urls), seeds or _Seeds(0), salt

    def __iter__(self):
        salt = f"resample/{self.salt}"
        rng = self.seeds.local(salt, self.seeds.start(salt))
        while True:
            yield {"url": self.urls[rng.randrange(len(self.urls))]}


class ShardList(torch.utils.data.IterableDataset):
    """Yields ``{"url": ...}`` for each shard: in order, or (``shuffle``) in an order that changes
    every pass but is the same on every rank and worker, so that splitting it afterwards gives
    each a disjoint part."""

    def __init__(self, urls: list[str], shuffle: bool = False, seeds: _Seeds | None = None, salt: str = ""):
        super().__init__()
        self.urls, self.shuffle, self.seeds, self.salt = list(urls), shuffle, seeds or _Seeds(0), salt

    def __iter__(self):
        urls = list(self.urls)
        if self.shuffle:
            salt = f"shards/{self.salt}"
            self.seeds.shared(salt, self.seeds.start(salt)).shuffle(urls)
        for url in urls:
            yield {"url": url}


class FileSamples(torch.utils.data.IterableDataset):
    """Samples read straight from audio files (a JSON datafile, CSV or folder), shaped like the
    samples of a shard (encoded audio bytes and a JSON of labels and source), so the stages after
    ``tarfile_to_samples`` take them unchanged. Clips are split by node and worker, shuffled per
    pass for training (the same order on every rank before splitting), or drawn with
    replacement, endlessly, when ``resampled``. A file that cannot be read is skipped and counted.
    """

    def __init__(self, spec: str, train: bool = False, resampled: bool = False, split_nodes: bool = True,
                 seeds: _Seeds | None = None, salt: str = "", skipped: SkipCounter | None = None):
        super().__init__()
        source = read_source(spec)
        self.spec, self.train, self.resampled, self.split_nodes = spec, train, resampled, split_nodes
        self.items = [(it.path, list(it.labels)) for it in source.items]
        if not self.items:
            raise SourceError(spec, "no clips")
        self.seeds, self.salt, self.skipped = seeds or _Seeds(0), salt, skipped or SkipCounter()

    def _read(self, path: str, labels: list[str]) -> dict | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            self.skipped.skip("audio", f"{path}: {e.strerror or e}")
            return None
        ext = Path(path).suffix[1:].lower()
        meta = {"labels": labels, "source": path}
        return {"__key__": path, "__url__": self.spec, ext if ext in AUDIO_KEYS else "audio": data,
                "json": json.dumps(meta).encode("utf-8")}

    def __iter__(self):
        if self.resampled:
            rng = self.seeds.local("files", self.salt, self.seeds.start(f"files/{self.salt}"))
            picks = (rng.randrange(len(self.items)) for _ in iter(int, 1))  # endless
        else:
            order = list(range(len(self.items)))
            if self.train:
                salt = f"files/{self.salt}"
                self.seeds.shared(salt, self.seeds.start(salt)).shuffle(order)
            picks = iter(order)
            if self.split_nodes:
                picks = wds.split_by_node(picks)
            picks = wds.split_by_worker(picks)
        for i in picks:
            sample = self._read(*self.items[i])
            if sample is not None:
                yield sample


# ---------------------------------------------------------------------------------------------
# Reader: stages (plain functions over iterators of dicts)
# ---------------------------------------------------------------------------------------------


def require_shards(src: Iterable[dict], what: str = "shards") -> Iterator[dict]:
    """Pass shard urls through; raise if this rank/worker got none (it would take no steps)."""
    n = 0
    for x in src:
        n += 1
        yield x
    if n == 0:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        raise ValueError(f"{what}: rank {rank} of {world}, worker {worker} of {workers} got no shard; "
                         "write more shards than ranks x workers, or read with resampled=True")


def shuffle_samples(src: Iterable[dict], bufsize: int = 1000, rng=None) -> Iterator[dict]:
    """Shuffle through a buffer of ``bufsize`` samples (0: pass through in order)."""
    if bufsize <= 1:
        yield from src
        return
    yield from wds.shuffle(bufsize=bufsize, rng=_rng(rng))(iter(src))


def _tar_error(url: str, offset: int, problem: str) -> tarfile.ReadError:
    return tarfile.ReadError(f"{problem} at byte {offset}", url)


def _tar_size(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256, for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_records(data: bytes) -> dict[str, str]:
    out, i = {}, 0
    while i < len(data) and data[i:i + 1] != b"\0":
        length = int(data[i:data.index(b" ", i)])
        key, _, value = data[data.index(b" ", i) + 1:i + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        i += length
    return out


def _read_into(stream, size: int) -> bytearray:
    """``size`` bytes read with one call, into a writable buffer (numpy and torch view it as is)."""
    buf = bytearray(size)
    if hasattr(stream, "readinto"):
        got = stream.readinto(buf)
    else:  # e.g. webdataset's pipe: streams
        data = stream.read(size)
        got = len(data)
        buf[:got] = data
    return buf if got == size else buf[:got]


def _tar_members(stream, url: str) -> Iterator[tuple[str, bytearray]]:
    """(name, data) of each regular file of an uncompressed tar stream (ustar, GNU long names and
    pax headers); raises tarfile.ReadError on a bad header or a truncated member."""
    offset, long_name, pax = 0, None, {}
    while True:
        header = stream.read(_BLOCK)
        if not header or header == bytes(_BLOCK):
            return  # end of archive (or of a stream cut at a member boundary)
        if len(header) < _BLOCK:
            raise _tar_error(url, offset, "truncated header")
        try:
            stored = int(header[148:156].split(b"\0", 1)[0].strip(), 8)
            size = int(pax["size"]) if "size" in pax else _tar_size(header[124:136])
        except ValueError:
            stored = size = -1
        if stored != sum(header) - sum(header[148:156]) + 8 * 32 or size < 0:
            raise _tar_error(url, offset, "bad header checksum (not a tar file, or corrupt)")
        kind = header[156:157]
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:263] == b"ustar\0" and header[345]:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        name = pax.get("path") or long_name or name
        data = _read_into(stream, size)
        pad = -size % _BLOCK
        if len(data) < size or (pad and len(stream.read(pad)) < pad):
            exn = _tar_error(url, offset, f"{name}: unexpected end of data")
            exn.member = name
            raise exn
        offset += _BLOCK + size + pad
        if kind == b"L":  # GNU: the next member's long name
            long_name = bytes(data).split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        if kind == b"x":  # pax: the next member's records
            pax = _pax_records(bytes(data))
            continue
        if kind in (b"0", b"\0", b"7"):  # regular files; directories, links and the rest are skipped
            yield name, data
        long_name, pax = None, {}


def read_tar(url: str, handler=None) -> Iterator[dict]:
    """Samples of one uncompressed tar shard, grouped by key as webdataset groups them:
    ``{"__key__": ..., "__url__": url, EXT: data, ...}``, data a writable bytearray.

    webdataset reads members through Python's tarfile in stream mode, which reads data in 10 KB
    pieces and joins them: about 0.25 ms for a 10 s clip of 16-bit PCM (320 KB), as much as
    everything else a fast format needs per clip; this reads each member's data with one call
    (``benchmarks/data_loading.py`` measures both). An error (unreadable file, bad header,
    truncated member) goes to ``handler`` (re-raised when None) with the url, and ends the shard:
    complete samples before it are kept, the one it cut is dropped.
    """
    sample = stream = None
    try:
        stream = wds.gopen(url)
        for name, data in _tar_members(stream, url):
            if _META.match(name) or ("/" not in name and name.startswith("__") and name.endswith("__")):
                continue  # metadata members, skipped as webdataset skips them
            key, ext = wds.tariterators.base_plus_ext(name)
            if key is None:
                continue  # no extension
            ext = ext.lower()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            if ext in sample:
                raise tarfile.ReadError(f"{name}: a second member of that name in one sample", url)
            sample[ext] = data
    except Exception as exn:  # noqa: BLE001 - any reading error goes to the handler, as in webdataset
        if handler is None:
            raise
        if isinstance(exn, OSError) and url not in exn.args:
            exn.args = exn.args + (url,)
        handler(exn)
        # The sample being read is complete if the member that failed starts the next one.
        cut = getattr(exn, "member", None)
        if sample is not None and cut is not None and wds.tariterators.base_plus_ext(cut)[0] != sample["__key__"]:
            yield sample
        return
    finally:
        if stream is not None:
            stream.close()
    if sample is not None:
        yield sample


def tar_samples(src: Iterable[dict], handler=None) -> Iterator[dict]:
    """Shard urls (``{"url": ...}``) -> their samples: uncompressed ``.tar`` shards by
    :func:`read_tar`, others (``.tar.gz``, ...) by webdataset's ``tarfile_to_samples``."""
    for shard in src:
        if shard["url"].endswith(".tar"):
            yield from read_tar(shard["url"], handler)
        else:
            yield from wds.tarfile_to_samples(handler=handler or wds.reraise_exception)(iter([shard]))


def _writable(data) -> bytearray:
    # The fast reader gives bytearrays; bytes (other readers, files) are copied once, since torch
    # wants a writable buffer to view.
    return data if isinstance(data, bytearray) else bytearray(data)


def _check_length(n: int, rate: int, name: str) -> None:
    if n == 0:
        raise AudioError(name, "empty audio (0 samples)")
    if n < MIN_SECONDS * rate:
        raise AudioError(name, f"too short: {n / rate * 1000:.1f} ms, at least {MIN_SECONDS * 1000:.0f} ms needed")


def _pcm_to_wave(pcm: torch.Tensor, rate: int, sample_rate: int, keep_int16: bool) -> torch.Tensor:
    """(samples,) int16 -> the int16 samples as they are (``keep_int16``, collate scales them), or
    float32 in [-1, 1) at ``sample_rate``. Integer audio cannot hold NaN: no finiteness check."""
    if keep_int16 and rate == sample_rate:
        return pcm
    wave = pcm.float().mul_(PCM16_SCALE)
    return AF.resample(wave, rate, sample_rate) if rate != sample_rate else wave


def decode_pcm16(data, meta: dict, sample_rate: int = DEFAULT_SAMPLE_RATE, name: str | None = None,
                 keep_int16: bool = False) -> torch.Tensor:
    """A ``pcm`` member (raw little-endian int16, mono, at the JSON's ``sample_rate``) -> wave."""
    rate = meta.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise AudioError(name, f"16-bit PCM needs a positive integer sample_rate in its JSON, got {rate!r}")
    if len(data) % 2:
        raise AudioError(name, f"{len(data)} bytes: not a whole number of 16-bit samples")
    _check_length(len(data) // 2, rate, name)
    arr = np.frombuffer(_writable(data), dtype="<i2")  # (samples,), a view of the member's bytes
    if not arr.dtype.isnative:
        arr = arr.astype(np.int16)
    return _pcm_to_wave(torch.from_numpy(arr), rate, sample_rate, keep_int16)


def decode_soundfile(data, sample_rate: int = DEFAULT_SAMPLE_RATE, name: str | None = None,
                     keep_int16: bool = False) -> torch.Tensor:
    """Encoded audio (FLAC, wav, ogg, ...) -> mono wave at ``sample_rate``. 16-bit files are read
    as int16 (and kept so with ``keep_int16``); others as float32, checked for NaN."""
    if not data:
        raise AudioError(name, "empty audio (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, as_int = f.samplerate, f.subtype == "PCM_16"
            arr = f.read(dtype="int16" if as_int else "float32", always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as e:
        raise AudioError(name, f"unreadable audio ({str(e).strip() or type(e).__name__})") from None
    if not as_int or arr.shape[1] > 1:
        wave = torch.from_numpy(np.ascontiguousarray(arr.T))  # (channels, samples)
        if as_int:
            wave = wave.float().mul_(PCM16_SCALE)
        return to_mono_resampled(wave, rate, sample_rate, name)
    _check_length(arr.shape[0], rate, name)
    return _pcm_to_wave(torch.from_numpy(arr[:, 0]), rate, sample_rate, keep_int16)


def decode_fbank(data, meta: dict, name: str | None = None, features: FeatureConfig | None = None,
                 sample_rate: int | None = None) -> torch.Tensor:
    """An ``fbank`` member -> (frames, mel bins) float16 unnormalized log-mel.

    Its settings (the JSON's ``fbank``) must be those of ``features`` (when given) and its rate
    ``sample_rate``: a mismatch raises ValueError (features at other settings cannot be used,
    and skipping them all would lose the source). Bad data raises AudioError.
    """
    spec = meta.get("fbank")
    bins = spec.get("num_mel_bins") if isinstance(spec, dict) else None
    if not isinstance(bins, int) or bins <= 0:
        raise AudioError(name, "precomputed fbank needs its settings (fbank.num_mel_bins, ...) in its JSON")
    want = {"sample_rate": sample_rate} if sample_rate is not None else {}
    if features is not None:
        want = _fbank_settings(features)
    for key, value in want.items():
        if spec.get(key, value) != value:
            raise ValueError(f"{name}: fbank computed with {key}={spec.get(key)!r}, but read for {key}={value!r}; "
                             "write the shards again with these settings, or read them with theirs")
    if not data or len(data) % (2 * bins):
        raise AudioError(name, f"{len(data)} bytes: not whole frames of {bins} float16 mel bins")
    arr = np.frombuffer(_writable(data), dtype="<f2").reshape(-1, bins)
    if not arr.dtype.isnative:
        arr = arr.astype(np.float16)
    feats = torch.from_numpy(arr)  # (T, F)
    lo, hi = torch.aminmax(feats)  # NaN propagates into both
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise AudioError(name, "fbank holds NaN or infinite values")
    return feats


def decode_samples(src: Iterable[dict], sample_rate: int = DEFAULT_SAMPLE_RATE,
                   skipped: SkipCounter | None = None, keep_int16: bool = False,
                   features: FeatureConfig | None = None) -> Iterator[dict]:
    """Tar samples -> ``{"wave": (samples,) at sample_rate, "path", "meta"}``, or, for a sample
    holding only precomputed features, ``{"fbank": (frames, mel bins) float16, "path", "meta"}``.

    The audio member (``pcm``: raw 16-bit PCM, or flac, wav, ogg, ...) is decoded, downmixed
    and resampled; waves are float32, or int16 as stored with ``keep_int16`` (for
    :func:`ssast.datasets.collate`, which scales them as it batches). An ``fbank`` member is
    checked against ``features`` (see :func:`decode_fbank`). The JSON member gives ``meta``. A
    sample without audio or features, with bad JSON or undecodable data is skipped and counted.
    """
    skipped = skipped or SkipCounter()
    for sample in src:
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        ext = PCM_KEY if PCM_KEY in sample else next((k for k in AUDIO_KEYS if k in sample), None)
        if ext is None and FBANK_KEY in sample:
            ext = FBANK_KEY
        if ext is None:
            members = ", ".join(k for k in sample if not k.startswith("__"))
            skipped.skip("sample", f"{name}: no audio or fbank member (has {members or 'nothing'})")
            continue
        meta = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError) as e:
                skipped.skip("sample", f"{name}.json: not JSON ({e})")
                continue
            if not isinstance(meta, dict):
                skipped.skip("sample", f"{name}.json: not a JSON object")
                continue
        out = {"path": meta.get("source", name), "meta": meta}
        try:
            if ext == PCM_KEY:
                out["wave"] = decode_pcm16(sample[ext], meta, sample_rate, f"{name}.{ext}", keep_int16)
            elif ext == FBANK_KEY:
                out["fbank"] = decode_fbank(sample[ext], meta, f"{name}.{ext}", features, sample_rate)
            else:
                out["wave"] = decode_soundfile(sample[ext], sample_rate, f"{name}.{ext}", keep_int16)
        except AudioError as e:
            skipped.skip("audio", str(e))
            continue
        skipped.ok()
        if "__source__" in sample:
            out["dataset"] = sample["__source__"]
        yield out


def crop_samples(src: Iterable[dict], num_samples: int, train: bool = True, rng=None, pad: bool = True,
                 num_frames: int | None = None) -> Iterator[dict]:
    """Random crop (train) or the beginning (eval) of longer waves; zero pad of shorter ones
    (``pad=False`` leaves that to :func:`ssast.datasets.collate`, which pads as it batches).

    ``length`` records the samples of real audio, for the features of padded clips. Precomputed
    ``fbank`` (frames, F) is cropped or padded alike to ``num_frames`` frames (the frames of
    ``num_samples`` samples), its real frames in ``frames``. Crops are views (with ``pad=False``
    nothing is copied).
    """
    g = torch.Generator()
    g.manual_seed(_rng(rng).getrandbits(63) if train else 0)
    for sample in src:
        if "fbank" in sample:
            if num_frames is None:
                raise ValueError("crop_samples: precomputed fbank needs num_frames")
            feats = _crop(sample["fbank"], 0, num_frames, train, g)  # (T, F), T <= num_frames
            sample["frames"] = feats.shape[0]
            if pad and feats.shape[0] < num_frames:
                feats = torch.nn.functional.pad(feats, (0, 0, 0, num_frames - feats.shape[0]))
            sample["fbank"] = feats
        else:
            wave = _crop(sample["wave"], -1, num_samples, train, g)
            sample["length"] = wave.shape[-1]
            if pad and wave.shape[-1] < num_samples:
                wave = torch.nn.functional.pad(wave, (0, num_samples - wave.shape[-1]))
            sample["wave"] = wave
        yield sample


def _crop(x: torch.Tensor, dim: int, size: int, train: bool, g: torch.Generator) -> torch.Tensor:
    """A random (train) or the first window of ``size`` along ``dim``, as a view; shorter x as is."""
    n = x.shape[dim]
    if n <= size:
        return x
    start = int(torch.randint(0, n - size + 1, (1,), generator=g)) if train else 0
    return x.narrow(dim, start, size)


def add_targets(src: Iterable[dict], labels: list[str], skipped: SkipCounter | None = None) -> Iterator[dict]:
    """Add ``target``: multi-hot over ``labels`` from ``meta["labels"]`` (list or comma string).

    A sample with a label outside ``labels`` is skipped and counted.
    """
    skipped = skipped or SkipCounter()
    index = {lab: i for i, lab in enumerate(labels)}
    for sample in src:
        labs = sample.get("meta", {}).get("labels", [])
        if isinstance(labs, str):
            labs = [t.strip() for t in labs.split(",") if t.strip()]
        unknown = [lab for lab in labs if lab not in index]
        if unknown:
            skipped.skip("label", f"{sample.get('path')}: unknown label(s) {', '.join(map(str, unknown))}")
            continue
        sample["target"] = multi_hot(labs, index)
        yield sample


def mix_sources(sources: list[Iterable[dict]], weights: list[float], rng=None,
                names: list[str] | None = None) -> Iterator[dict]:
    """Draw each sample from source i with probability weights[i] / sum(weights).

    A source that runs out is dropped and the others go on; endless (resampled) sources keep the
    proportions for good. With ``names``, each sample is tagged ``__source__``.
    """
    if len(sources) != len(weights):
        raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
    r = _rng(rng)
    its = [iter(s) for s in sources]
    ws = [float(w) for w in weights]
    tags = list(names) if names else None
    while its:
        i = r.choices(range(len(its)), weights=ws)[0]
        try:
            sample = next(its[i])
        except StopIteration:
            del its[i], ws[i]
            if tags:
                del tags[i]
            continue
        if tags:
            sample["__source__"] = tags[i]
        yield sample


class MixedSources(torch.utils.data.IterableDataset):
    """Samples of several sub-pipelines (one per source) drawn by weight; see :func:`mix_sources`."""

    def __init__(self, pipelines: list, weights: list[float], names: list[str], rng):
        super().__init__()
        self.pipelines, self.weights, self.names, self.rng = pipelines, weights, names, rng

    def __iter__(self):
        return mix_sources(self.pipelines, self.weights, self.rng, self.names)


# ---------------------------------------------------------------------------------------------
# Reader: the pipeline
# ---------------------------------------------------------------------------------------------


class ShardPipeline(wds.DataPipeline):
    """A ``webdataset.DataPipeline`` with the reader's state.

    ``skipped`` counts what was skipped (summed over DataLoader workers); ``set_epoch(e)`` picks
    epoch e's shard order, shuffle and crops when a seed is set (call it before each epoch, as
    with a DistributedSampler, unless the DataLoader's workers are persistent); with
    ``epoch_length`` each rank yields exactly that many items per epoch, split among its
    DataLoader workers, repeating its shards as often as needed (``DataPipeline.with_epoch``
    with each worker's share).
    """

    def __init__(self, *stages, skipped: SkipCounter, seeds: _Seeds, epoch_length: int | None = None,
                 labels: list[str] | None = None):
        super().__init__(*stages)
        self.skipped, self._seeds, self.epoch_length, self.labels = skipped, seeds, epoch_length, labels

    def set_epoch(self, epoch: int) -> None:
        # Every random stream of the stages (shard lists, resampling, shuffle, crops, mixing)
        # derives from (seed, epoch, rank, worker), so this is all an epoch needs.
        self._seeds.epoch = epoch - 1  # __iter__ moves on to epoch

    def __len__(self) -> int:
        if self.epoch_length is None:
            raise TypeError("a shard stream has no length; give epoch_length")
        return self.epoch_length

    def __iter__(self):
        self._seeds.next_epoch()
        if self.epoch_length is None:
            return self._reported(super().__iter__())
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        n = self.epoch_length // workers + (worker < self.epoch_length % workers)
        if n == 0:  # more workers than items: this one has none (with_epoch(0) would not end)
            return self._reported(iter(()))
        self.with_epoch(n)
        return self._reported(super().__iter__())

    def _reported(self, it):
        yield from it
        if self.skipped.total:
            log.warning("%s: epoch %d, rank/worker %s done; %s", self.skipped.name, self._seeds.epoch,
                        _worker_tag(), self.skipped.describe())


def _source_stages(source: MixSource, train: bool, resampled: bool, split_nodes: bool, seeds: _Seeds,
                   skipped: SkipCounter, require: bool) -> list:
    urls, salt = source.shards, source.name
    read = functools.partial(tar_samples, handler=skipped.handler)
    if source.files is not None:
        return [FileSamples(source.files, train, resampled, split_nodes, seeds, salt, skipped)]
    if resampled:
        # Every rank and worker draws shards with replacement from the whole list, endlessly.
        return [ResampledShardList(urls, seeds, salt), read]
    return [
        ShardList(urls, shuffle=train, seeds=seeds, salt=salt),
        wds.split_by_node if split_nodes else None,
        wds.split_by_worker,
        functools.partial(require_shards, what=salt) if require else None,
        read,
    ]


def shard_pipeline(shards, *, sample_rate: int = DEFAULT_SAMPLE_RATE, num_samples: int | None = None,
                   batch_size: int | None = None, train: bool = True,
                   labels: list[str] | str | os.PathLike | None = None,
                   shuffle_buffer: int = 1000, resampled: bool = False, epoch_length: int | None = None,
                   seed: int | None = None, split_nodes: bool = True, drop_last: bool | None = None,
                   skipped: SkipCounter | None = None, features: FeatureConfig | None = None,
                   fbank_batches: bool | None = None, wave_dtype: torch.dtype = torch.float32) -> ShardPipeline:
    """A streaming reader of webdataset shards, for a DataLoader (``batch_size=None`` there when
    ``batch_size`` is given here).

    Args:
        shards: a brace pattern or list of patterns/urls/folders of shards; a JSON datafile, CSV
            or folder of audio (read file by file, through the same stages); a mixture: a list of
            ``(pattern, weight)`` or of :class:`MixSource`, or a mixture JSON file (:func:`read_mixture`).
        sample_rate: rate of the waves (decoded audio is resampled to it).
        num_samples: crop or pad every wave to this length (None: keep lengths; batches are padded).
        batch_size: batch with :func:`ssast.datasets.collate`; None yields single samples.
        train: shuffled shards and samples, random crops, full batches only; False (evaluation):
            shards and samples in order, the start of each clip, the last partial batch kept.
        labels: label vocabulary (a list of ids, or the official label CSV) for multi-hot
            ``target``s; None (pretraining) makes no target and needs no label file.
        shuffle_buffer: samples in the shuffle buffer (training); 0 turns it off.
        resampled: draw shards with replacement, endlessly (no split by node or worker);
            give ``epoch_length`` to end epochs.
        epoch_length: items (batches when ``batch_size`` is set) each rank yields per epoch. Give
            it for multi-rank training, where every rank must take the same number of steps
            (without it each rank reads its own shards once, and those may hold different counts).
        seed: makes shard orders, shuffles, crops and mixing reproducible per (epoch, rank,
            worker); None draws fresh entropy (shard orders then follow the epoch only).
        split_nodes: split shards by distributed rank (torch.distributed, or RANK/WORLD_SIZE).
        skipped: a :class:`SkipCounter` to count skipped shards and samples into.
        features: the feature settings (:class:`ssast.features.FeatureConfig`) that precomputed
            ``fbank`` members must have been made with (a mismatch raises), and with which the
            waves of a batch that mixes both are turned into fbank; default: the default
            settings at ``sample_rate``, of which only the sample rate is checked.
        fbank_batches: whether batches carry ``fbank`` instead of ``wave``: True (waves are
            turned into fbank in the reader), False (precomputed features are refused), None:
            True when a source's ``manifest.json`` says its format is ``fbank``, else decided
            per batch by what it holds.
        wave_dtype: ``torch.float32`` (batches of waves in [-1, 1]), or ``torch.int16``: the
            16-bit samples as stored (other clips rounded to them), for the training device to
            scale by 1 / 32768 (``ssast.datasets.PCM16_SCALE``): half the bytes to move between
            processes, pin and copy, and no conversion on the CPU.

    Items are dicts: ``wave``, ``length`` (samples of real audio, with ``num_samples``),
    ``target`` (with labels), ``path`` (original file), ``meta``, and ``dataset`` (the source's
    name, in a mixture); batched: ``wave`` (B, N), ``length`` (B,) (pass it as ``lengths=`` to
    :class:`ssast.features.FeatureExtractor`), ``target`` (B, C), lists for the rest. Sources
    of precomputed features give ``fbank`` (frames, F) and ``frames`` instead, batched as
    ``fbank`` (B, T, F) float16 and ``frames`` (B,) (see the module docstring).
    """
    sources = _as_sources(shards)
    vocab = None
    if labels is not None:
        vocab = list(labels) if isinstance(labels, (list, tuple)) else read_label_csv(labels)[0]
    skipped = skipped or SkipCounter(name=sources[0].name if len(sources) == 1 else "mixture")
    seeds = _Seeds(seed)
    require = epoch_length is not None and not resampled
    if len(sources) == 1:
        head = _source_stages(sources[0], train, resampled, split_nodes, seeds, skipped, require)
    else:
        subs = [wds.DataPipeline(*_source_stages(s, train, resampled, split_nodes, seeds, skipped, require))
                for s in sources]
        head = [MixedSources(subs, [s.weight for s in sources], [s.name for s in sources], _SeedSource(seeds, "mix"))]
    drop_last = train if drop_last is None else drop_last
    geometry = features or FeatureConfig(sample_rate=sample_rate)
    frames = None if num_samples is None else \
        num_frames(num_samples, sample_rate, geometry.frame_length_ms, geometry.frame_shift_ms)
    batching = bool(batch_size)
    if fbank_batches is None and any(_manifest_format(src) == "fbank" for src in sources):
        fbank_batches = True
    stages = head + [
        functools.partial(shuffle_samples, bufsize=shuffle_buffer, rng=_SeedSource(seeds, "shuffle"))
        if train and shuffle_buffer > 1 else None,
        # With batches, 16-bit audio stays int16 until collate scales it into the batch: one pass.
        functools.partial(decode_samples, sample_rate=sample_rate, skipped=skipped, keep_int16=batching,
                          features=features),
        functools.partial(crop_samples, num_samples=num_samples, train=train, rng=_SeedSource(seeds, "crop"),
                          pad=not batching, num_frames=frames) if num_samples is not None else None,
        functools.partial(add_targets, labels=vocab, skipped=skipped) if vocab is not None else None,
        wds.batched(batch_size, collation_fn=functools.partial(collate, num_samples=num_samples, num_frames=frames,
                                                               features=geometry, fbank_batches=fbank_batches,
                                                               wave_dtype=wave_dtype),
                    partial=not drop_last)
        if batching else None,
    ]
    return ShardPipeline(*stages, skipped=skipped, seeds=seeds, epoch_length=epoch_length, labels=vocab)
