"""Webdataset tar shards: a writer, and a streaming reader built from small stages.

A shard is a tar file of samples, each two members under one key: ``KEY.flac`` (mono 16-bit
FLAC at the dataset's sample rate) and ``KEY.json`` (``labels``: list of label ids,
``duration`` in seconds, ``sample_rate``, ``source``: the original file). A labeled set has a
``labels.csv`` in the official label CSV format (``index,mid,display_name``) beside its shards,
and every set a ``manifest.json`` (shards, clip counts, the brace pattern).

The reader (:func:`shard_pipeline`) is a ``webdataset.DataPipeline``, one stage per line:

    shard list (brace patterns; shuffled per epoch for training, or resampled endlessly)
    -> split by node -> split by worker -> tar members to samples (errors counted, run goes on)
    -> shuffle buffer -> decode FLAC and resample -> crop or pad -> multi-hot target -> batch

Each stage after the shard list is a plain generator function over an iterator of dicts.
Several sources mix by weight (:func:`mix_sources`, :func:`read_mixture`). Unlabeled sources
(pretraining) need no label file: without ``labels`` no target is made.
"""
from __future__ import annotations

import csv
import functools
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
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import torch
import webdataset as wds
from tqdm import tqdm

from .audio import DEFAULT_SAMPLE_RATE, AudioError, decode_audio, encode_flac, load_audio
from .datasets import SkipCounter, collate, crop_or_pad, multi_hot
from .sources import Source, SourceError, read_label_csv, read_source, validate

log = logging.getLogger(__name__)

AUDIO_KEYS = ("flac", "wav", "ogg", "oga", "opus", "mp3", "aiff", "aif", "au", "audio")
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
    labels_csv: str | None = None
    num_labels: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input path, reason)

    @property
    def num_clips(self) -> int:
        return sum(self.counts)

    def format(self, limit: int = 20) -> str:
        lines = [f"wrote {len(self.shards)} shard{'s' if len(self.shards) != 1 else ''} to {self.outdir}"
                 + (f" ({os.path.basename(self.pattern)})" if self.pattern else "")
                 + f": {self.num_clips} clips, {self.seconds / 3600:.2f} h of audio at {self.sample_rate} Hz, "
                 f"{sum(self.sizes) / 1e6:.1f} MB"]
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


def _encode_item(path: str, sample_rate: int) -> tuple[bytes | None, int, str | None]:
    """(FLAC bytes, samples, None), or (None, 0, problem) for an unreadable file."""
    try:
        wave = load_audio(path, sample_rate)
        return encode_flac(wave, sample_rate), wave.shape[-1], None
    except AudioError as e:
        return None, 0, e.problem
    except (OSError, RuntimeError, ValueError) as e:  # anything else a broken file may raise
        return None, 0, f"unreadable audio ({type(e).__name__}: {e})"


def _init_encoder_worker() -> None:
    torch.set_num_threads(1)


def _encoded(items, sample_rate: int, num_workers: int) -> Iterator[tuple[bytes | None, int, str | None]]:
    paths = [it.path for it in items]
    if num_workers <= 0:
        for p in paths:
            yield _encode_item(p, sample_rate)
        return
    import multiprocessing

    # forkserver: the parent has torch's thread pools running, which fork does not copy safely.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # import once in the server, not in every worker
    with ctx.Pool(num_workers, initializer=_init_encoder_worker) as pool:
        yield from pool.imap(functools.partial(_encode_item, sample_rate=sample_rate), paths, chunksize=4)


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
                 seed: int = 0, num_workers: int = 0, overwrite: bool = False, progress: bool = False) -> ShardSummary:
    """Pack a JSON datafile, CSV or folder into tar shards ``OUTDIR/PREFIX-000000.tar``, ...

    Each clip is read, downmixed, resampled to ``sample_rate`` and stored as FLAC with a JSON of
    its labels, duration, sample rate and source path. A shard is closed before it would pass
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
    summary = ShardSummary(outdir=str(out), pattern=None, sample_rate=sample_rate, skipped=list(report.bad))

    writer = None
    shard_bytes = shard_count = 0
    mtime = int(time.time())
    bar = tqdm(total=len(items), unit="clip", desc="shards", disable=not progress, dynamic_ncols=True)
    try:
        for index, (item, (flac, n, problem)) in enumerate(zip(items, _encoded(items, sample_rate, num_workers))):
            bar.update(1)
            if flac is None:
                summary.skipped.append((item.path, problem))
                bar.set_postfix(skipped=len(summary.skipped), refresh=False)
                continue
            meta = {"labels": list(item.labels), "duration": n / sample_rate, "sample_rate": sample_rate,
                    "source": item.path}
            sample = {"__key__": _safe_key(index, item.path), "flac": flac,
                      "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
            record = _tar_member_bytes(len(sample["flac"])) + _tar_member_bytes(len(sample["json"]))
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
    manifest = {"pattern": summary.pattern and os.path.basename(summary.pattern),
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


class _WorkerSeed:
    """``worker_seed`` for wds.ResampledShards: distinct per rank and worker, and per epoch."""

    def __init__(self, seeds: _Seeds, salt: str):
        self.seeds, self.salt = seeds, salt

    def __call__(self) -> int:
        return self.seeds.local("resample", self.salt).getrandbits(31)


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


def decode_samples(src: Iterable[dict], sample_rate: int = DEFAULT_SAMPLE_RATE,
                   skipped: SkipCounter | None = None) -> Iterator[dict]:
    """Tar samples -> ``{"wave": (samples,) float32 at sample_rate, "path", "meta"}``.

    The audio member (flac, wav, ogg, ...) is decoded, downmixed and resampled; the JSON member
    gives ``meta``. A sample without audio, with bad JSON or undecodable audio is skipped and
    counted.
    """
    skipped = skipped or SkipCounter()
    for sample in src:
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        ext = next((k for k in AUDIO_KEYS if k in sample), None)
        if ext is None:
            members = ", ".join(k for k in sample if not k.startswith("__"))
            skipped.skip("sample", f"{name}: no audio member (has {members or 'nothing'})")
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
        try:
            wave = decode_audio(sample[ext], sample_rate, name=f"{name}.{ext}")
        except AudioError as e:
            skipped.skip("audio", str(e))
            continue
        skipped.ok()
        out = {"wave": wave, "path": meta.get("source", name), "meta": meta}
        if "__source__" in sample:
            out["dataset"] = sample["__source__"]
        yield out


def crop_samples(src: Iterable[dict], num_samples: int, train: bool = True, rng=None) -> Iterator[dict]:
    """Random crop (train) or the beginning (eval) of longer waves; zero pad of shorter ones.

    ``length`` records the samples of real audio, for the features of padded clips.
    """
    g = torch.Generator()
    g.manual_seed(_rng(rng).getrandbits(63) if train else 0)
    for sample in src:
        sample["length"] = min(sample["wave"].shape[-1], num_samples)
        sample["wave"] = crop_or_pad(sample["wave"], num_samples, train, g)
        yield sample


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
    DataLoader workers, repeating its shards as often as needed.
    """

    def __init__(self, *stages, skipped: SkipCounter, seeds: _Seeds, epoch_length: int | None = None,
                 labels: list[str] | None = None):
        super().__init__(*stages)
        self.skipped, self._seeds, self.epoch_length, self.labels = skipped, seeds, epoch_length, labels

    def set_epoch(self, epoch: int) -> None:
        self._seeds.epoch = epoch - 1  # __iter__ moves on to epoch
        # webdataset's ResampledShards counts its own epochs into its seed: keep it in step, so
        # that a pipeline set to epoch e draws what a fresh one set to e draws.
        for stage in self._resampled_shards():
            stage.epoch = epoch - 1

    def _resampled_shards(self):
        for stage in self.pipeline:
            subs = stage.pipelines if isinstance(stage, MixedSources) else [stage]
            for sub in subs:
                for st in getattr(sub, "pipeline", [sub]):
                    if isinstance(st, wds.ResampledShards):
                        yield st

    def __len__(self) -> int:
        if self.epoch_length is None:
            raise TypeError("a shard stream has no length; give epoch_length")
        return self.epoch_length

    def __iter__(self):
        self._seeds.next_epoch()
        if self.epoch_length is None:
            return self._reported(self.iterator())
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        n = self.epoch_length // workers + (worker < self.epoch_length % workers)
        self.repetitions = sys.maxsize
        return self._reported(islice(self.iterator(), n))

    def _reported(self, it):
        yield from it
        if self.skipped.total:
            log.warning("%s: epoch %d, rank/worker %s done; %s", self.skipped.name, self._seeds.epoch,
                        _worker_tag(), self.skipped.describe())


def _source_stages(source: MixSource, train: bool, resampled: bool, split_nodes: bool, seeds: _Seeds,
                   skipped: SkipCounter, require: bool) -> list:
    urls, salt = source.shards, source.name
    if source.files is not None:
        return [FileSamples(source.files, train, resampled, split_nodes, seeds, salt, skipped)]
    if resampled:
        # Every rank and worker draws shards with replacement from the whole list, endlessly.
        if seeds.seed is None:
            shards = wds.ResampledShards(urls)
        else:
            shards = wds.ResampledShards(urls, seed=seeds.seed, worker_seed=_WorkerSeed(seeds, salt),
                                         deterministic=True)
        return [shards, wds.tarfile_to_samples(handler=skipped.handler)]
    return [
        ShardList(urls, shuffle=train, seeds=seeds, salt=salt),
        wds.split_by_node if split_nodes else None,
        wds.split_by_worker,
        functools.partial(require_shards, what=salt) if require else None,
        wds.tarfile_to_samples(handler=skipped.handler),
    ]


def shard_pipeline(shards, *, sample_rate: int = DEFAULT_SAMPLE_RATE, num_samples: int | None = None,
                   batch_size: int | None = None, train: bool = True,
                   labels: list[str] | str | os.PathLike | None = None,
                   shuffle_buffer: int = 1000, resampled: bool = False, epoch_length: int | None = None,
                   seed: int | None = None, split_nodes: bool = True, drop_last: bool | None = None,
                   skipped: SkipCounter | None = None) -> ShardPipeline:
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

    Items are dicts: ``wave``, ``length`` (samples of real audio, with ``num_samples``),
    ``target`` (with labels), ``path`` (original file), ``meta``, and ``dataset`` (the source's
    name, in a mixture); batched: ``wave`` (B, N), ``length`` (B,) (pass it as ``lengths=`` to
    :class:`ssast.features.FeatureExtractor`), ``target`` (B, C), lists for the rest.
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
    stages = head + [
        functools.partial(shuffle_samples, bufsize=shuffle_buffer, rng=_SeedSource(seeds, "shuffle"))
        if train and shuffle_buffer > 1 else None,
        functools.partial(decode_samples, sample_rate=sample_rate, skipped=skipped),
        functools.partial(crop_samples, num_samples=num_samples, train=train, rng=_SeedSource(seeds, "crop"))
        if num_samples is not None else None,
        functools.partial(add_targets, labels=vocab, skipped=skipped) if vocab is not None else None,
        wds.batched(batch_size, collation_fn=collate, partial=not drop_last) if batch_size else None,
    ]
    return ShardPipeline(*stages, skipped=skipped, seeds=seeds, epoch_length=epoch_length, labels=vocab)
