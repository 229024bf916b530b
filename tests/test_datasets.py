import csv
import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from ssast.audio import load_audio
from ssast.datasets import AudioDataset, SkipCounter, collate, crop_or_pad, frames_to_samples, multi_hot
from ssast.features import fbank_reference
from ssast.sources import SourceError


def write_wav(path, seconds, sr=16000, freq=440.0, channels=1, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, data.astype(np.float32), sr)
    return str(path)


@pytest.fixture
def tree(tmp_path):
    """Two class folders: 'dog' (3 clips) and 'cat' (2 clips), mixed rates and channel counts."""
    write_wav(tmp_path / "pc" / "dog" / "d0.wav", 0.5, seed=1)
    write_wav(tmp_path / "pc" / "dog" / "d1.wav", 0.2, sr=8000, seed=2)
    write_wav(tmp_path / "pc" / "dog" / "d2.wav", 0.3, channels=2, seed=3)
    write_wav(tmp_path / "pc" / "cat" / "c0.wav", 0.4, freq=880, seed=4)
    write_wav(tmp_path / "pc" / "cat" / "c1.wav", 0.25, sr=22050, freq=880, seed=5)
    return tmp_path


def write_label_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        w.writerows(rows)


def test_frames_to_samples_matches_torchaudio_kaldi_framing():
    assert frames_to_samples(1024) == 164080
    for frames in (2, 7, 100):
        n = frames_to_samples(frames)
        assert fbank_reference(torch.zeros(n) + 0.1, 16000).shape[0] == frames  # enough samples
        assert fbank_reference(torch.zeros(n - 1) + 0.1, 16000).shape[0] == frames - 1  # and no more
    assert frames_to_samples(100, sample_rate=8000) == 99 * 80 + 200


def test_crop_or_pad():
    wave = torch.arange(10.0)
    assert torch.equal(crop_or_pad(wave, 4, train=False), torch.arange(4.0))  # eval: the beginning
    assert torch.equal(crop_or_pad(wave, 13), torch.cat([wave, torch.zeros(3)]))  # zero pad at the end
    assert torch.equal(crop_or_pad(wave, 10, train=True), wave)
    starts = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        c = crop_or_pad(wave, 4, train=True, generator=g)
        start = int(c[0])
        assert torch.equal(c, torch.arange(start, start + 4.0))  # a contiguous window
        starts.add(start)
    assert starts == set(range(7))  # every window position is reachable


def test_multi_hot():
    idx = {"a": 0, "b": 1, "c": 2}
    assert multi_hot(["c", "a"], idx).tolist() == [1.0, 0.0, 1.0]
    assert multi_hot([], idx).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(KeyError):
        multi_hot(["z"], idx)


def test_folder_per_class(tree):
    ds = AudioDataset(tree / "pc", num_samples=4000, train=False)
    assert len(ds) == 5 and ds.labels == ["cat", "dog"] and ds.num_labels == 2
    by_path = {ds[i]["path"]: ds[i] for i in range(len(ds))}
    d1 = by_path[str(tree / "pc" / "dog" / "d1.wav")]
    assert d1["wave"].shape == (4000,) and d1["wave"].dtype == torch.float32
    assert d1["target"].tolist() == [0.0, 1.0]
    # 0.2 s at 8 kHz -> 3200 samples at 16 kHz, then zero padding
    ref = load_audio(tree / "pc" / "dog" / "d1.wav", 16000)
    assert ref.shape == (3200,)
    torch.testing.assert_close(d1["wave"][:3200], ref)
    assert d1["wave"][3200:].abs().max() == 0 and d1["length"] == 3200
    assert collate([d1])["length"].tolist() == [3200]
    # eval takes the beginning of longer clips
    d0 = by_path[str(tree / "pc" / "dog" / "d0.wav")]
    torch.testing.assert_close(d0["wave"], load_audio(tree / "pc" / "dog" / "d0.wav")[:4000])


def test_json_datafile_with_label_csv(tree):
    write_label_csv(tree / "labels.csv", [(0, "/m/dog", "Dog"), (1, "/m/cat", "Cat"), (2, "/m/bark", "Bark")])
    data = {"data": [{"wav": "pc/dog/d0.wav", "labels": "/m/dog,/m/bark"},
                     {"wav": str(tree / "pc" / "cat" / "c0.wav"), "labels": "/m/cat"}]}
    (tree / "data.json").write_text(json.dumps(data))
    ds = AudioDataset(tree / "data.json", label_csv=tree / "labels.csv", num_samples=1600)
    assert ds.labels == ["/m/dog", "/m/cat", "/m/bark"] and ds.display_names == ["Dog", "Cat", "Bark"]
    assert ds[0]["target"].tolist() == [1.0, 0.0, 1.0]
    assert ds[1]["target"].tolist() == [0.0, 1.0, 0.0]
    assert ds[0]["path"] == str(tree / "pc" / "dog" / "d0.wav")


def test_csv_source(tree):
    (tree / "list.csv").write_text("path,labels\npc/dog/d0.wav,dog;loud\npc/cat/c0.wav,cat\n")
    ds = AudioDataset(tree / "list.csv", num_samples=800)
    assert ds.labels == ["cat", "dog", "loud"]
    assert ds[0]["target"].tolist() == [0.0, 1.0, 1.0]


def test_unlabeled_folder_gives_no_target(tree):
    write_wav(tree / "unl" / "a.wav", 0.3)
    write_wav(tree / "unl" / "sub" / "b.flac", 0.3)
    ds = AudioDataset(tree / "unl", num_samples=2000)
    assert len(ds) == 2 and ds.labels is None and ds.num_labels == 0
    item = ds[1]
    assert set(item) == {"wave", "length", "path"} and item["wave"].shape == (2000,)
    batch = collate([ds[0], ds[1]])
    assert "target" not in batch and batch["wave"].shape == (2, 2000)


def test_validation_reports_bad_entries(tree, caplog):
    write_label_csv(tree / "labels.csv", [(0, "dog", "dog"), (1, "cat", "cat")])
    (tree / "pc" / "junk.wav").write_bytes(b"not audio at all" * 10)
    data = {"data": [{"wav": "pc/dog/d0.wav", "labels": "dog"},
                     {"wav": "pc/dog/missing.wav", "labels": "dog"},
                     {"wav": "pc/cat/c0.wav", "labels": "cow"},
                     {"wav": "pc/junk.wav", "labels": "cat"}]}
    (tree / "data.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="ssast.datasets"):
        ds = AudioDataset(tree / "data.json", label_csv=tree / "labels.csv")
    assert len(ds) == 1 and len(ds.report.bad) == 3
    text = caplog.text
    assert "missing.wav: missing file" in text and "unknown label(s) cow" in text and "junk.wav: unreadable" in text
    with pytest.raises(SourceError, match="missing.wav"):
        AudioDataset(tree / "data.json", label_csv=tree / "labels.csv", strict=True)


def test_file_unreadable_mid_epoch_is_skipped_and_counted(tree, caplog):
    ds = AudioDataset(tree / "pc", num_samples=1000)
    gone = ds.items[1].path
    os.remove(gone)
    with caplog.at_level(logging.WARNING, logger="ssast.datasets"):
        item = ds[1]
    assert item["path"] == ds.items[2].path  # the next clip instead
    assert ds.skipped.counts()["audio"] == 1 and gone in caplog.text
    # counted across DataLoader worker processes too
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(b["wave"].shape[0] for b in batches) == len(ds)
    assert ds.skipped.counts()["audio"] == 2


def test_seeded_crops_are_reproducible(tree):
    ds = AudioDataset(tree / "pc", num_samples=800, seed=3)
    i = next(i for i, it in enumerate(ds.items) if it.path.endswith("d0.wav"))
    a, b = ds[i]["wave"], ds[i]["wave"]
    assert torch.equal(a, b)
    crops = []
    for epoch in range(5):
        ds.set_epoch(epoch)
        crops.append(ds[i]["wave"])
    assert len({tuple(c[:3].tolist()) for c in crops}) > 1


def test_collate_pads_and_checks_targets():
    a = {"wave": torch.ones(3), "path": "a", "target": torch.tensor([1.0, 0.0])}
    b = {"wave": torch.ones(5), "path": "b", "target": torch.tensor([0.0, 1.0])}
    batch = collate([a, b])
    assert batch["wave"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["length"].tolist() == [3, 5] and batch["path"] == ["a", "b"]
    assert collate([dict(a, wave=torch.ones(6), length=3)])["length"].tolist() == [3]  # padded earlier
    assert batch["target"].shape == (2, 2)
    with pytest.raises(ValueError, match="target"):
        collate([a, {"wave": torch.ones(3), "path": "c"}])


def test_skip_counter_gives_up_when_nothing_is_readable():
    c = SkipCounter(max_consecutive=3, log_first=0, log_every=1000)
    c.skip("audio", "x")
    c.ok()
    c.skip("audio", "y")
    c.skip("tar", "z")
    with pytest.raises(RuntimeError, match="3 items in a row"):
        c.skip("audio", "w")
    assert c.counts() == {"tar": 1, "sample": 0, "audio": 3, "label": 0}
