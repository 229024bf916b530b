import io
import json
import logging
import math
import random
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from test_datasets import write_label_csv, write_wav

from ssast.audio import encode_flac, load_audio
from ssast.cli import main as cli_main
from ssast.datasets import SkipCounter, frames_to_samples
from ssast.features import FeatureConfig, FeatureExtractor, num_frames
from ssast.shards import (
    MixSource,
    add_targets,
    crop_samples,
    decode_samples,
    expand_shards,
    mix_sources,
    pcm16,
    read_mixture,
    read_tar,
    shard_pipeline,
    shuffle_samples,
    tar_samples,
    write_shards,
)
from ssast.sources import SourceError

LSB = 1 / 32768  # one step of 16-bit audio


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three class folders of short clips (some at 8 kHz or stereo), a JSON datafile over them
    with its label CSV, and its shards."""
    root = tmp_path_factory.mktemp("corpus")
    entries = []
    for c, cls in enumerate(("bird", "car", "rain")):
        for i in range(6):
            sr = 8000 if i == 1 else 16000
            p = write_wav(root / "pc" / cls / f"{cls}.{i}.wav", 0.15 + 0.05 * i, sr=sr, freq=300 + 200 * c,
                          channels=2 if i == 2 else 1, seed=10 * c + i)
            entries.append({"wav": p, "labels": f"/m/{cls}" + (",/m/loud" if i % 3 == 0 else "")})
    write_label_csv(root / "labels.csv", [(0, "/m/bird", "Bird"), (1, "/m/car", "Car"), (2, "/m/rain", "Rain"),
                                          (3, "/m/loud", "Loud")])
    (root / "data.json").write_text(json.dumps({"data": entries}))
    summary = write_shards(root / "pc", root / "shards", max_size_mb=0.05)
    return root, summary


def read_all(pipeline):
    return list(pipeline)


def test_writer_on_folder_reads_back_equal(corpus):
    root, s = corpus
    assert s.num_clips == 18 and not s.skipped and len(s.shards) >= 4
    assert s.labels_csv and open(s.labels_csv).read().splitlines() == [
        "index,mid,display_name", "0,bird,bird", "1,car,car", "2,rain,rain"]
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    assert manifest["clips"] == 18 and [m["clips"] for m in manifest["shards"]] == s.counts
    samples = read_all(shard_pipeline(s.pattern, train=False, labels=s.labels_csv))
    assert len(samples) == 18
    for sm in samples:
        ref = load_audio(sm["path"], 16000)  # resampled and downmixed like the writer's input
        assert sm["wave"].shape == ref.shape
        assert (sm["wave"] - ref).abs().max() <= LSB  # FLAC is lossless at 16 bits
        cls = sm["path"].split("/")[-2]
        assert sm["meta"]["labels"] == [cls]
        assert sm["meta"]["sample_rate"] == 16000 and sm["meta"]["duration"] == pytest.approx(ref.shape[0] / 16000)
        assert sm["target"].tolist() == [float(c == cls) for c in ("bird", "car", "rain")]


def test_writer_on_json_datafile_skips_and_lists_bad_inputs(corpus, tmp_path):
    root, _ = corpus
    data = json.loads((root / "data.json").read_text())
    (tmp_path / "junk.wav").write_bytes(b"\x00garbage" * 50)
    data["data"] += [{"wav": str(tmp_path / "gone.wav"), "labels": "/m/car"},
                     {"wav": str(tmp_path / "junk.wav"), "labels": "/m/car"},
                     {"wav": data["data"][0]["wav"], "labels": "/m/unknown"}]
    (tmp_path / "data.json").write_text(json.dumps(data))
    s = write_shards(tmp_path / "data.json", tmp_path / "out", label_csv=root / "labels.csv", max_count=5,
                     sample_rate=8000)
    assert s.num_clips == 18 and s.counts == [5, 5, 5, 3]
    reasons = dict(s.skipped)
    assert reasons[str(tmp_path / "gone.wav")] == "missing file"
    assert reasons[str(tmp_path / "junk.wav")].startswith("unreadable audio")
    assert "unknown label(s) /m/unknown" in [r for p, r in s.skipped if p == data["data"][0]["wav"]]
    assert "skipped: 3" in s.format()
    samples = read_all(shard_pipeline(s.pattern, train=False, sample_rate=8000, labels=s.labels_csv))
    vocab = ["/m/bird", "/m/car", "/m/rain", "/m/loud"]
    by_source = {e["wav"]: e["labels"].split(",") for e in data["data"][:18]}
    for sm in samples:
        assert sm["meta"]["sample_rate"] == 8000
        labs = by_source[sm["path"]]
        assert sm["meta"]["labels"] == labs
        assert sm["target"].tolist() == [float(v in labs) for v in vocab]
        ref = load_audio(sm["path"], 8000)
        assert (sm["wave"] - ref).abs().max() <= LSB


def _member_blocks(size):
    return 512 + math.ceil(size / 512) * 512


def test_shard_sizes_respected(corpus):
    root, s = corpus
    limit = 0.05e6
    sizes = [p.stat().st_size for p in sorted((root / "shards").glob("shard-*.tar"))]
    assert sizes == s.sizes and all(size <= limit for size in sizes)
    # Tight: each shard but the last was closed because the next clip would not have fitted.
    members = []
    for path in s.shards:
        with tarfile.open(path) as tf:
            members.append([m.size for m in tf.getmembers()])
    for this, nxt in zip(members, members[1:]):
        payload = sum(map(_member_blocks, this)) + sum(map(_member_blocks, nxt[:2]))  # + next clip's flac, json
        assert math.ceil((payload + 1024) / 10240) * 10240 > limit


def test_expand_shards(tmp_path, corpus):
    root, s = corpus
    n = len(s.shards)
    assert expand_shards(s.pattern) == s.shards
    assert expand_shards(str(root / "shards")) == s.shards  # a folder: its tar files in order
    two = expand_shards(f"{s.shards[0]}::{root}/shards/shard-{{000001..000002}}.tar")
    assert two == s.shards[:3]
    assert expand_shards("shard-{000000..000002}.tar", base=root / "shards") == s.shards[:3]
    assert expand_shards("shard-000000.tar::shard-{000001..000002}.tar", base=root / "shards") == s.shards[:3]
    assert expand_shards("http://host/a-{0..2}.tar") == [f"http://host/a-{i}.tar" for i in range(3)]
    with pytest.raises(SourceError, match=r"1 of \d+ shards not found: .*shard-000099.tar"):
        expand_shards([s.pattern, str(root / "shards" / "shard-000099.tar")])
    assert n >= 4


def test_split_by_worker_each_sample_once(corpus):
    _, s = corpus
    pipe = shard_pipeline(s.pattern, train=False)
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=2)
    paths = [sm["path"] for sm in loader]
    assert len(paths) == 18 and len(set(paths)) == 18
    # batched, in eval the last partial batch is kept
    loader = torch.utils.data.DataLoader(shard_pipeline(s.pattern, train=False, batch_size=4, num_samples=1000),
                                         batch_size=None, num_workers=2)
    batches = list(loader)
    assert sorted(p for b in batches for p in b["path"]) == sorted(paths)
    assert all(b["wave"].shape[1:] == (1000,) for b in batches)


def test_split_by_node_with_rank_env(corpus, monkeypatch):
    _, s = corpus
    seen = []
    for rank in range(2):
        # webdataset reads RANK and WORLD_SIZE when torch.distributed is not initialised
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({sm["path"] for sm in shard_pipeline(s.pattern, train=False)})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 18
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert len({sm["path"] for sm in shard_pipeline(s.pattern, train=False)}) == 18


def test_shuffle(corpus):
    _, s = corpus
    eval_order = [sm["path"] for sm in shard_pipeline(s.pattern, train=False)]
    assert eval_order == [sm["path"] for sm in shard_pipeline(s.pattern, train=False)]  # deterministic
    pipe = shard_pipeline(s.pattern, train=True, shuffle_buffer=8, seed=5)
    pipe.set_epoch(0)
    a = [sm["path"] for sm in pipe]
    pipe.set_epoch(0)
    b = [sm["path"] for sm in pipe]
    c = [sm["path"] for sm in pipe]  # next epoch
    assert a == b and a != c and a != eval_order
    assert sorted(a) == sorted(c) == sorted(eval_order)


def test_shuffle_stage():
    items = [{"i": i} for i in range(50)]
    out = [x["i"] for x in shuffle_samples(items, bufsize=10, rng=random.Random(0))]
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert [x["i"] for x in shuffle_samples(items, bufsize=0)] == list(range(50))


def test_crop_and_pad_stage():
    long = torch.arange(100.0)
    out = list(crop_samples([{"wave": long}, {"wave": torch.ones(5)}], 10, train=False))
    assert torch.equal(out[0]["wave"], torch.arange(10.0))
    assert out[1]["wave"].tolist() == [1.0] * 5 + [0.0] * 5
    assert [o["length"] for o in out] == [10, 5]
    starts = {int(x["wave"][0]) for x in crop_samples(({"wave": long} for _ in range(300)), 10, train=True, rng=1)}
    assert len(starts) > 30 and min(starts) >= 0 and max(starts) <= 90


def _tar_bytes(samples):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _flac_sample(key, seconds=0.1, labels=("a",)):
    wave = 0.1 * torch.sin(torch.arange(int(seconds * 16000)) * 0.05)
    meta = {"labels": list(labels), "duration": seconds, "sample_rate": 16000, "source": key}
    return key, {"flac": encode_flac(wave, 16000), "json": json.dumps(meta).encode()}


def test_decode_and_target_stages_in_memory():
    skipped = SkipCounter()
    key, good = _flac_sample("k0", labels=("b",))
    src = [dict(good, __key__="k0", __url__="u"), {"__key__": "k1", "__url__": "u", "json": b"{}"},
           {"__key__": "k2", "__url__": "u", "flac": b"junk", "json": b"{}"},
           {"__key__": "k3", "__url__": "u", "flac": good["flac"], "json": b"{not json"}]
    out = list(decode_samples(src, 8000, skipped))
    assert len(out) == 1 and out[0]["wave"].shape == (800,) and out[0]["path"] == "k0"
    assert skipped.counts() == {"tar": 0, "sample": 2, "audio": 1, "label": 0}
    out = list(add_targets(out + [{"wave": out[0]["wave"], "meta": {"labels": "a,c"}}], ["a", "b", "c"], skipped))
    assert [o["target"].tolist() for o in out] == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert list(add_targets([{"meta": {"labels": ["z"]}}], ["a"], skipped)) == []
    assert skipped.counts()["label"] == 1


def test_corrupt_members_are_skipped_counted_and_reported(tmp_path, caplog):
    good = [_flac_sample(f"{i:04d}") for i in range(6)]
    bad_flac = ("0003x", {"flac": b"\x00not flac at all" * 20, "json": b'{"labels": ["a"]}'})
    (tmp_path / "s-000000.tar").write_bytes(_tar_bytes(good[:2] + [bad_flac] + good[2:3]))
    whole = _tar_bytes(good[3:6])
    # cut the second sample's flac member in half: the first sample stays readable
    cut = 512 + math.ceil(len(good[3][1]["flac"]) / 512) * 512 + 512 + 512 + 512 + len(good[4][1]["flac"]) // 2
    (tmp_path / "s-000001.tar").write_bytes(whole[:cut])
    (tmp_path / "s-000002.tar").write_bytes(_tar_bytes([_flac_sample("0100"), _flac_sample("0101")]))
    pipe = shard_pipeline(str(tmp_path / "s-{000000..000002}.tar"), train=False, labels=["a"])
    with caplog.at_level(logging.WARNING):
        out = list(pipe)
    keys = sorted(sm["path"] for sm in out)
    assert keys == ["0000", "0001", "0002", "0003", "0100", "0101"]
    counts = pipe.skipped.counts()
    assert counts["audio"] == 1 and counts["tar"] >= 1  # the garbage flac; the truncated tar
    assert "0003x.flac" in caplog.text and "s-000001.tar" in caplog.text
    assert "skipped" in caplog.records[-1].getMessage()  # the end-of-pass report


def test_mix_sources_proportions():
    def endless(tag):
        while True:
            yield {"tag": tag}

    n = 20000
    tags = Counter(x["tag"] for _, x in zip(range(n), mix_sources([endless("a"), endless("b")], [0.7, 0.3], rng=0)))
    sd = math.sqrt(n * 0.7 * 0.3)
    assert abs(tags["a"] - 0.7 * n) < 4 * sd
    # a finite source that runs out is dropped; the others go on
    out = [x["tag"] for x in mix_sources([iter([{"tag": "a"}] * 3), iter([{"tag": "b"}] * 50)], [10, 1], rng=0)]
    assert out.count("a") == 3 and out.count("b") == 50


def test_weighted_mixture_from_json_resampled(corpus, tmp_path):
    root, s = corpus
    speech = write_shards(root / "pc" / "rain", tmp_path / "speech", labeled=False)
    assert speech.labels_csv is None
    (tmp_path / "mix.json").write_text(json.dumps({"sources": [
        {"name": "sounds", "shards": s.pattern, "weight": 0.7},
        {"name": "speech", "shards": "speech/shard-000000.tar", "weight": 0.3}]}))
    sources = read_mixture(tmp_path / "mix.json")
    assert [(m.name, m.weight) for m in sources] == [("sounds", 0.7), ("speech", 0.3)]
    assert sources[1].shards == [str(tmp_path / "speech" / "shard-000000.tar")]
    n = 400
    pipe = shard_pipeline(tmp_path / "mix.json", resampled=True, epoch_length=n, num_samples=800, seed=0,
                          shuffle_buffer=0)
    out = list(pipe)
    assert len(out) == n and all("target" not in sm for sm in out)  # pretraining: no label file needed
    share = Counter(sm["dataset"] for sm in out)["sounds"] / n
    assert abs(share - 0.7) < 4 * math.sqrt(0.21 / n)
    # sources also as (pattern, weight) pairs
    pipe = shard_pipeline([(s.pattern, 1.0), (speech.pattern, 1.0)], resampled=True, epoch_length=10, seed=0)
    assert len(list(pipe)) == 10
    with pytest.raises(SourceError, match="weight"):
        (tmp_path / "bad.json").write_text(json.dumps({"sources": [{"shards": s.pattern, "weight": -1}]}))
        read_mixture(tmp_path / "bad.json")


def test_resampled_epoch_gives_exact_batches_per_rank(corpus, monkeypatch):
    _, s = corpus
    one_shard = s.shards[0]  # fewer shards than ranks x workers: resampling does not split them
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        pipe = shard_pipeline(one_shard, resampled=True, epoch_length=5, batch_size=3, num_samples=500, seed=1)
        assert len(pipe) == 5
        loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=2)
        for _ in range(2):  # two epochs
            batches = list(loader)
            assert len(batches) == 5 and all(b["wave"].shape == (3, 500) for b in batches)


def test_finite_epoch_length_repeats_shards_and_refuses_idle_ranks(corpus, monkeypatch):
    _, s = corpus
    pipe = shard_pipeline(s.pattern, epoch_length=7, batch_size=4, num_samples=500, seed=0)
    assert len(list(pipe)) == 7  # 18 clips give 4 full batches a pass; repeated
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="rank 1 of 2, worker 0 of 1 got no shard"):
        list(shard_pipeline(s.shards[0], epoch_length=4, batch_size=1))


def test_cli_shards(corpus, tmp_path, capsys):
    root, _ = corpus
    (root / "list.csv").write_text("path,label\npc/bird/bird.0.wav,bird\npc/car/car.0.wav,car\nnope.wav,car\n")
    assert cli_main(["shards", str(root / "list.csv"), str(tmp_path / "o"), "--max-size-mb", "1",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 shard" in out and "2 clips" in out and "as flac" in out and "nope.wav: missing file" in out
    assert cli_main(["shards", str(root / "list.csv"), str(tmp_path / "o"), "--no-progress"]) == 2  # would overwrite
    assert "already holds shards" in capsys.readouterr().err
    assert cli_main(["shards", str(root / "list.csv"), str(tmp_path / "o"), "--no-progress", "--overwrite",
                     "--prefix", "train", "--format", "pcm16", "--num-workers", "1"]) == 0
    assert "as pcm16" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["labels.csv", "manifest.json",
                                                                  "shard-000000.tar", "train-000000.tar"]
    with tarfile.open(tmp_path / "o" / "train-000000.tar") as tf:
        assert sorted(m.name.split(".", 1)[1] for m in tf.getmembers()) == ["json", "json", "pcm", "pcm"]
    assert cli_main(["shards", str(root / "list.csv"), str(tmp_path / "f"), "--no-progress", "--format", "fbank",
                     "--num-mel-bins", "40"]) == 0
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["format"] == "fbank" and manifest["fbank"]["num_mel_bins"] == 40


def test_writer_worker_processes_write_the_same_shards(corpus, tmp_path):
    root, s = corpus
    par = write_shards(root / "pc" / "car", tmp_path / "par", num_workers=2)
    ser = write_shards(root / "pc" / "car", tmp_path / "ser")
    assert par.counts == ser.counts

    def members(path):
        with tarfile.open(path) as tf:
            return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]

    assert members(par.shards[0]) == members(ser.shards[0])


def test_padded_batch_lengths_give_the_recipe_features(corpus):
    # The recipes compute each clip's fbank on its own samples and zero-pad the fbank; the batch's
    # lengths let the batched fbank do the same on zero-padded waves.
    from ssast.datasets import frames_to_samples
    from ssast.features import fbank, fbank_reference

    _, s = corpus
    frames = 50  # 0.5 s: longer than every clip of the corpus
    batch = next(iter(shard_pipeline(s.pattern, train=False, batch_size=4, num_samples=frames_to_samples(frames))))
    feats = fbank(batch["wave"], 16000, 128, lengths=batch["length"])  # (B, frames, 128)
    assert feats.shape == (4, frames, 128)
    for row, path, n in zip(feats, batch["path"], batch["length"].tolist()):
        ref = fbank_reference(load_audio(path, 16000), 16000)  # (T0, 128), T0 < frames
        assert n == load_audio(path, 16000).shape[0]
        expected = torch.nn.functional.pad(ref, (0, 0, 0, frames - ref.shape[0]))
        torch.testing.assert_close(row, expected, atol=1e-4, rtol=1e-4)


def test_datafile_and_folder_sources_stream_through_the_same_stages(corpus, tmp_path, monkeypatch):
    root, s = corpus
    vocab = ["/m/bird", "/m/car", "/m/rain", "/m/loud"]
    out = list(shard_pipeline(root / "data.json", train=False, labels=vocab, num_samples=1000))
    entries = json.loads((root / "data.json").read_text())["data"]
    assert [sm["path"] for sm in out] == [e["wav"] for e in entries]  # eval: in order
    for sm, e in zip(out, entries):
        assert sm["target"].tolist() == [float(v in e["labels"].split(",")) for v in vocab]
        assert torch.equal(sm["wave"][:sm["length"]], load_audio(e["wav"], 16000)[:1000])
    # split by node, as for shards
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert [sm["path"] for sm in shard_pipeline(root / "pc", train=False)] == sorted(
        str(p) for p in (root / "pc").rglob("*.wav"))[1::3]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    # a mixture of shards and a folder of files; a file deleted mid-run is skipped and counted
    folder = tmp_path / "speech"
    for i in range(4):
        write_wav(folder / f"u{i}.wav", 0.1, seed=i)
    (tmp_path / "mix.json").write_text(json.dumps({"sources": [
        {"name": "sounds", "shards": s.pattern, "weight": 0.5},
        {"name": "speech", "shards": "speech", "weight": 0.5}]}))
    mix = read_mixture(tmp_path / "mix.json")
    assert mix[1].files == str(folder) and mix[1].shards == []
    pipe = shard_pipeline(tmp_path / "mix.json", resampled=True, epoch_length=60, seed=0)
    (folder / "u0.wav").unlink()
    got = Counter(sm["dataset"] for sm in pipe)
    assert sum(got.values()) == 60 and got["speech"] > 10 and got["sounds"] > 10
    assert pipe.skipped.counts()["audio"] >= 1


def test_set_epoch_replays_an_epoch_of_the_resampled_stream(corpus, tmp_path):
    """A reused pipeline set to epoch e yields what a fresh pipeline set to e yields (resume)."""
    _, s = corpus
    speech = write_shards(corpus[0] / "pc" / "rain", tmp_path / "speech", labeled=False)

    def make(shards):
        return shard_pipeline(shards, resampled=True, epoch_length=6, num_samples=400, seed=3, shuffle_buffer=4)

    for shards in (s.pattern, [(s.pattern, 0.5), (speech.pattern, 0.5)]):
        used = make(shards)
        first = [x["path"] for x in used]  # epoch 0
        list(used)  # epoch 1
        used.set_epoch(1)
        again = [x["path"] for x in used]
        fresh = make(shards)
        fresh.set_epoch(1)
        assert again == [x["path"] for x in fresh]
        fresh.set_epoch(0)
        assert first == [x["path"] for x in fresh]


# ----------------------------------------------------------------------------- sample formats

def _by_path(samples, key="wave"):
    return {sm["path"]: sm[key] for sm in samples}


@pytest.fixture(scope="module")
def formats(corpus):
    """The corpus's folder written in each format (the same clips, in the same order)."""
    root, flac = corpus
    out = {"flac": flac}
    for fmt in ("pcm16", "fbank"):
        out[fmt] = write_shards(root / "pc", root / f"shards-{fmt}", max_size_mb=0.05, audio_format=fmt)
    return out


def test_pcm16_rounds_as_libsndfile_writes_flac():
    # libsndfile's own float -> 16-bit conversion (through FLAC) is the reference.
    x = torch.cat([torch.linspace(-1.2, 1.2, 4001), torch.tensor([0.5, 1.5, -0.5, 2.5, 32766.5]) / 32768,
                   0.3 * torch.randn(2000, generator=torch.Generator().manual_seed(0))])
    ref, _ = sf.read(io.BytesIO(encode_flac(x, 16000)), dtype="int16")
    assert np.array_equal(pcm16(x), ref)


def test_pcm16_shards_hold_the_flac_samples(formats):
    flac, pcm = formats["flac"], formats["pcm16"]
    assert pcm.num_clips == flac.num_clips == 18 and pcm.audio_format == "pcm16"
    assert json.loads((Path(pcm.outdir) / "manifest.json").read_text())["format"] == "pcm16"
    with tarfile.open(pcm.shards[0]) as tf:
        assert {m.name.split(".", 1)[1] for m in tf.getmembers()} == {"pcm", "json"}
    ref = _by_path(shard_pipeline(flac.pattern, train=False, labels=flac.labels_csv))
    got = list(shard_pipeline(pcm.pattern, train=False, labels=pcm.labels_csv))
    assert len(got) == 18 and all(sm["wave"].dtype == torch.float32 for sm in got)
    for sm in got:
        assert torch.equal(sm["wave"], ref[sm["path"]])
        assert sm["target"].sum() == 1
    # batched: int16 as stored until collate scales it into the batch, the same numbers
    for b in shard_pipeline(pcm.pattern, train=False, batch_size=5, num_samples=6000):
        for row, n, path in zip(b["wave"], b["length"].tolist(), b["path"]):
            assert torch.equal(row[:n], ref[path][:6000]) and not row[n:].any()
    # int16 batches: the stored samples; clips resampled on reading are rounded as the writer rounds
    for fmt in (pcm, flac):
        for b in shard_pipeline(fmt.pattern, train=False, batch_size=5, num_samples=6000, wave_dtype=torch.int16):
            assert b["wave"].dtype == torch.int16
            for row, n, path in zip(b["wave"], b["length"].tolist(), b["path"]):
                assert torch.equal(row[:n].float() / 32768, ref[path][:6000]) and not row[n:].any()
    b = next(iter(shard_pipeline(pcm.pattern, train=False, batch_size=18, sample_rate=8000, wave_dtype=torch.int16)))
    ref8 = _by_path(shard_pipeline(flac.pattern, train=False, sample_rate=8000))
    for row, n, path in zip(b["wave"], b["length"].tolist(), b["path"]):
        assert torch.equal(row[:n], torch.from_numpy(pcm16(ref8[path])))
    # read at another rate: resampled like the FLAC clips
    for sm in shard_pipeline(pcm.pattern, train=False, sample_rate=8000):
        assert torch.equal(sm["wave"], ref8[sm["path"]])


def test_fbank_shards_hold_the_features_of_the_flac_samples(formats):
    flac, fb = formats["flac"], formats["fbank"]
    waves = _by_path(shard_pipeline(flac.pattern, train=False))
    got = list(shard_pipeline(fb.pattern, train=False))
    assert len(got) == 18
    for sm in got:
        feats = sm["fbank"]  # (T, 128) float16, unnormalized
        assert feats.dtype == torch.float16 and "wave" not in sm
        frames = feats.shape[0]
        assert sm["meta"]["fbank"] == {"sample_rate": 16000, "num_mel_bins": 128, "frame_length_ms": 25.0,
                                       "frame_shift_ms": 10.0, "window": "hanning", "frames": frames}
        ref = FeatureExtractor(FeatureConfig(target_length=frames)).fbank(waves[sm["path"]])[0]  # (T, 128)
        assert ref.shape == feats.shape
        torch.testing.assert_close(feats.float(), ref, rtol=2 ** -11, atol=1e-4)  # fp16 rounding


def test_fbank_batches_are_cropped_padded_and_keep_their_frames(formats):
    fb = formats["fbank"]
    whole = _by_path(shard_pipeline(fb.pattern, train=False), "fbank")
    frames = 30  # longer than some clips, shorter than others
    num_samples = frames_to_samples(frames)
    batches = list(shard_pipeline(fb.pattern, train=False, batch_size=4, num_samples=num_samples))
    assert sum(len(b["path"]) for b in batches) == 18
    for b in batches:
        assert b["fbank"].dtype == torch.float16 and b["fbank"].shape[1:] == (frames, 128)
        assert "wave" not in b and "length" not in b
        for row, n, path in zip(b["fbank"], b["frames"].tolist(), b["path"]):
            assert n == min(frames, whole[path].shape[0])
            assert torch.equal(row[:n], whole[path][:n]) and not row[n:].any()  # eval: the first frames
    # training: random windows of the whole clip's frames
    for b in shard_pipeline(fb.pattern, train=True, batch_size=3, num_samples=frames_to_samples(8), seed=1):
        for row, path in zip(b["fbank"], b["path"]):
            ref = whole[path].unfold(0, 8, 1).transpose(1, 2)  # (windows, 8, 128)
            assert (ref == row).flatten(1).all(1).any()


def test_fbank_with_other_settings_is_refused(formats):
    fb = formats["fbank"]
    with pytest.raises(ValueError, match="num_mel_bins=128, but read for num_mel_bins=64"):
        list(shard_pipeline(fb.pattern, train=False, features=FeatureConfig(num_mel_bins=64)))
    with pytest.raises(ValueError, match="sample_rate=16000, but read for sample_rate=8000"):
        list(shard_pipeline(fb.pattern, train=False, sample_rate=8000))
    assert len(list(shard_pipeline(fb.pattern, train=False, features=FeatureConfig()))) == 18


def test_mixed_formats_in_one_mixture(formats):
    flac, pcm, fb = formats["flac"], formats["pcm16"], formats["fbank"]
    waves = _by_path(shard_pipeline(flac.pattern, train=False))
    # audio formats mix into batches of waves
    mix = [MixSource("flac", flac.shards, 1.0), MixSource("pcm", pcm.shards, 1.0)]
    got = Counter()
    for b in shard_pipeline(mix, train=False, batch_size=6, num_samples=4000):
        for row, n, path, ds in zip(b["wave"], b["length"].tolist(), b["path"], b["dataset"]):
            assert torch.equal(row[:n], waves[path][:4000])
            got[ds] += 1
    assert got == {"flac": 18, "pcm": 18}
    # with an fbank source (its manifest says so), every batch carries fbank; the waves' fbank is
    # computed in the reader, with the same settings
    mix = [MixSource("flac", flac.shards, 1.0), MixSource("fbank", fb.shards, 1.0)]
    frames = 20
    got = Counter()
    for b in shard_pipeline(mix, train=False, batch_size=4, num_samples=frames_to_samples(frames)):
        assert set(b) >= {"fbank", "frames"} and "wave" not in b and b["fbank"].shape[1:] == (frames, 128)
        for row, n, path, ds in zip(b["fbank"], b["frames"].tolist(), b["path"], b["dataset"]):
            ref = FeatureExtractor(FeatureConfig(target_length=frames)).fbank(waves[path][:frames_to_samples(frames)])[0]
            assert n == min(frames, num_frames(waves[path].shape[0], 16000))
            torch.testing.assert_close(row[:n].float(), ref[:n], rtol=2 ** -11, atol=1e-4)
            got[ds] += 1
    assert got == {"flac": 18, "fbank": 18}
    with pytest.raises(ValueError, match="batches of waveforms were asked for"):
        list(shard_pipeline(mix, train=False, batch_size=4, num_samples=4000, fbank_batches=False))


def _pcm_sample(key, seconds=0.1, rate=16000):
    pcm = (3000 * torch.sin(torch.arange(int(seconds * rate)) * 0.05)).to(torch.int16).numpy()
    meta = {"labels": ["a"], "duration": seconds, "sample_rate": rate, "source": key}
    return key, {"pcm": pcm.astype("<i2").tobytes(), "json": json.dumps(meta).encode()}


def _fbank_sample(key, frames=12, bins=8, value=-3.0):
    meta = {"labels": ["a"], "sample_rate": 16000, "source": key,
            "fbank": {"sample_rate": 16000, "num_mel_bins": bins, "frames": frames}}
    return key, {"fbank": np.full((frames, bins), value, dtype="<f2").tobytes(), "json": json.dumps(meta).encode()}


def test_corrupt_member_of_each_format_is_skipped_and_counted(tmp_path):
    good = [_flac_sample("f0"), _pcm_sample("p0"), _fbank_sample("b0")]
    _, pcm = _pcm_sample("x")
    _, fb = _fbank_sample("x")
    bad = [("f1", {"flac": b"fLaC" + bytes(300), "json": b"{}"}),  # a FLAC header and nothing after
           ("p1", dict(pcm, pcm=pcm["pcm"][:-1])),  # odd byte count
           ("p2", dict(pcm, json=b'{"labels": ["a"]}')),  # no sample_rate
           ("p3", dict(pcm, pcm=pcm["pcm"][:100])),  # 50 samples: too short
           ("b1", dict(fb, fbank=fb["fbank"][:-6])),  # not whole frames
           ("b2", dict(fb, fbank=np.array([np.nan] * 96, dtype="<f2").tobytes())),  # NaN
           ("b3", dict(fb, json=b'{"labels": ["a"]}'))]  # no settings
    (tmp_path / "m-000000.tar").write_bytes(_tar_bytes(good[:1] + bad[:4] + good[1:] + bad[4:]))
    skipped = SkipCounter()
    out = list(shard_pipeline(str(tmp_path / "m-000000.tar"), train=False, labels=["a"], skipped=skipped))
    assert sorted(sm["path"] for sm in out) == ["b0", "f0", "p0"]
    assert skipped.counts() == {"tar": 0, "sample": 0, "audio": 7, "label": 0}
    messages = " ".join(m for _, m in skipped.recent)
    for key, problem in (("f1.flac", "unreadable audio"), ("p1.pcm", "not a whole number of 16-bit samples"),
                         ("p2.pcm", "sample_rate"), ("p3.pcm", "too short"), ("b1.fbank", "not whole frames"),
                         ("b2.fbank", "NaN"), ("b3.fbank", "settings")):
        assert re.search(re.escape(key) + ".*" + problem, messages), (key, problem)


def test_tar_reader_reads_what_webdataset_reads(tmp_path):
    long = "k" * 120  # a name too long for a ustar header: pax or GNU long-name members
    members = [("a/0001.flac", b"x" * 700), ("a/0001.json", b"{}"), (f"a/{long}.pcm", b"\x01\x02" * 300),
               (f"a/{long}.json", b"{}"), ("a/0003.txt", b""), ("a/__k__.json", b"{}"), ("__info__", b"{}"),
               ("__x__/y.json", b"{}")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        path = tmp_path / f"t{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tf:
            dir_info = tarfile.TarInfo("a")
            dir_info.type = tarfile.DIRTYPE
            tf.addfile(dir_info)
            for name, data in members if fmt != tarfile.USTAR_FORMAT else members[:2]:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mtime = 1.5  # a fractional mtime: pax headers for every member in PAX format
                tf.addfile(ti, io.BytesIO(data))
        ours = [{k: bytes(v) if isinstance(v, bytearray) else v for k, v in s.items()} for s in read_tar(str(path))]
        theirs = list(wds.tarfile_to_samples()(iter([{"url": str(path)}])))
        assert ours == theirs and len(ours) == (4 if fmt != tarfile.USTAR_FORMAT else 1)
    piped = [{k: bytes(v) if isinstance(v, bytearray) else v for k, v in s.items() if k != "__url__"}
             for s in read_tar(f"pipe:cat {path}")]  # webdataset's pipe: urls
    assert piped == [{k: v for k, v in s.items() if k != "__url__"} for s in theirs]
    # compressed shards go through webdataset's reader
    gz = tmp_path / "c.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        for name, data in members[:2]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    assert [s["__key__"] for s in tar_samples([{"url": str(gz)}])] == ["a/0001"]
    # errors name the shard and go to the handler
    (tmp_path / "bad.tar").write_bytes(b"\x07" * 2048)
    seen = []
    assert list(read_tar(str(tmp_path / "bad.tar"), handler=seen.append)) == []
    assert "checksum" in str(seen[0]) and str(tmp_path / "bad.tar") in seen[0].args
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(read_tar(str(tmp_path / "bad.tar")))


def test_epoch_length_below_the_worker_count(corpus):
    _, s = corpus
    pipe = shard_pipeline(s.shards[0], resampled=True, epoch_length=1, batch_size=2, num_samples=400, seed=0)
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=2)
    assert len(list(loader)) == 1


def test_collate_scales_int16_rows_and_pads_fbank():
    from ssast.datasets import collate

    pcm = torch.tensor([-32768, -1, 0, 1, 32767], dtype=torch.int16)
    batch = collate([{"wave": pcm, "path": "a"}, {"wave": torch.full((3,), 0.25), "length": 2, "path": "b"}],
                    num_samples=6)
    assert batch["wave"].dtype == torch.float32 and batch["wave"].shape == (2, 6)
    assert batch["wave"][0].tolist() == [-1.0, -1 / 32768, 0.0, 1 / 32768, 32767 / 32768, 0.0]
    assert batch["wave"][1].tolist() == [0.25] * 3 + [0.0] * 3 and batch["length"].tolist() == [5, 2]
    fb = collate([{"fbank": torch.ones(3, 4, dtype=torch.float16), "frames": 3},
                  {"fbank": torch.full((5, 4), 2.0, dtype=torch.float16)}], num_frames=6)
    assert fb["fbank"].shape == (2, 6, 4) and fb["fbank"].dtype == torch.float16 and set(fb) == {"fbank", "frames"}
    assert fb["frames"].tolist() == [3, 5] and fb["fbank"][0, 3:].abs().sum() == 0 and fb["fbank"][1, 4, 0] == 2
    with pytest.raises(ValueError, match="different mel bins"):
        collate([{"fbank": torch.ones(3, 4)}, {"fbank": torch.ones(3, 5)}])
