"""``ssast predict``: windows, streaming, scores against a direct model call on torchaudio's
reference fbank, detections, metadata, the three output formats, bad files, inputs."""
import csv
import json
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from ssast import ASTModel, ModelConfig, save_checkpoint
from ssast.audio import load_audio
from ssast.cli import main
from ssast.features import FeatureConfig, fbank_reference
from ssast.predict import (
    RAVEN_COLUMNS,
    Detection,
    FileResult,
    PredictionRun,
    Predictor,
    detect,
    merge_detections,
    predict,
    raven_table_names,
    resolve_activation,
    write,
    write_raven,
)
from ssast.stream import Recording, collect_inputs, cut_windows, parse_audiomoth_comment, read_metadata, window_spans

SR = 16000
LABELS = ["frog", "bird", "rain"]
FEATURES = FeatureConfig(num_mel_bins=16, target_length=64, mean=-5.0, std=3.0)  # not AudioSet's: must be used
AUDIOMOTH = ("Recorded at 14:23:05 12/05/2023 (UTC+1) by AudioMoth 24E144085F256A23 at medium gain while "
             "battery was 4.2V and temperature was 21.3C.")


def tiny_classifier(label_dim=3, tdim=64, seed=0) -> ASTModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(embed_dim=32, depth=2, num_heads=2, num_prefix_tokens=2, fshape=4, tshape=4, fstride=4,
                      tstride=4, input_fdim=16, input_tdim=tdim, label_dim=label_dim, model_size="custom",
                      stage="finetune")
    model = ASTModel(config=cfg)
    with torch.no_grad():  # a head with some spread, so that scores cross the threshold
        model.mlp_head[1].weight.mul_(20)
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(tiny_classifier(), path, labels=LABELS, features=FEATURES.to_dict(), meta={"multilabel": True})
    return path


@pytest.fixture(scope="module")
def predictor(ckpt):
    return Predictor.from_checkpoint(ckpt, device="cpu")


def noise(seconds, sr=SR, channels=1, seed=0):
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 600 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)  # bursts
    x = (0.05 * g.standard_normal((len(t), channels)) + tone[:, None]).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def riff_wav(path, samples: np.ndarray, sr: int, info: dict[bytes, str]):
    """A 16-bit PCM WAV with a LIST/INFO chunk before the data, as AudioMoth writes it."""
    def chunk(cid, data):
        return cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sr, sr * 2, 2, 16)
    listing = b"INFO" + b"".join(chunk(k, v.encode() + b"\0") for k, v in info.items())
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"LIST", listing) + chunk(b"data", pcm)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# ----------------------------------------------------------------------------- windows

@pytest.mark.parametrize("n, win, hop, mins, starts, lengths", [
    (100, 40, 20, 1, [0, 20, 40, 60], [40, 40, 40, 40]),  # exact fit: no padded window
    (110, 40, 20, 1, [0, 20, 40, 60, 80], [40, 40, 40, 40, 30]),  # one padded last window
    (30, 40, 20, 1, [0], [30]),  # shorter than one window: a single padded window
    (100, 40, 40, 1, [0, 40, 80], [40, 40, 20]),
    (100, 40, 40, 25, [0, 40], [40, 40]),  # a 20-sample tail is too short for a frame: dropped
    (10, 40, 40, 25, [], []),  # too short for anything
    (100, 20, 30, 1, [0, 30, 60, 90], [20, 20, 20, 10]),  # hop > window: gaps
    (85, 20, 30, 1, [0, 30, 60], [20, 20, 20]),  # the tail 80..85 lies in a gap
    (115, 40, 10, 1, [0, 10, 20, 30, 40, 50, 60, 70, 80], [40] * 8 + [35]),  # only the first partial one
])
def test_window_spans(n, win, hop, mins, starts, lengths):
    s, l_ = window_spans(n, win, hop, mins)
    assert s.tolist() == starts and l_.tolist() == lengths


def test_streamed_windows_equal_the_spans_and_the_samples():
    g = torch.Generator().manual_seed(0)
    for n, win, hop in [(1000, 160, 80), (1000, 160, 160), (999, 100, 230), (50, 160, 80), (4321, 400, 7)]:
        x = torch.randn(n, generator=g)
        cuts = sorted(torch.randint(0, n, (6,), generator=g).tolist())
        blocks = [x[a:b] for a, b in zip([0, *cuts], [*cuts, n]) if b > a]
        got = list(cut_windows(blocks, win, hop, 25))
        starts, lengths = window_spans(n, win, hop, 25)
        assert [g_[1] for g_ in got] == starts.tolist()
        assert [g_[2] for g_ in got] == lengths.tolist()
        for k, s, length, w in got:
            assert w.shape == (win,)
            assert torch.equal(w[:length], x[s:s + length]) and not w[length:].any()


@pytest.mark.parametrize("rate", [44100, 48000, 8000])
def test_streaming_resample_and_downmix_equal_whole_file(tmp_path, rate):
    x = noise(3.3, sr=rate, channels=2, seed=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    with Recording(path, SR, block_seconds=0.37) as rec:  # many blocks, none aligned to anything
        streamed = torch.cat(list(rec.blocks()))
        assert rec.samples_out == rec.num_samples == streamed.numel()
    whole = AF.resample(torch.from_numpy(x).mean(dim=1), rate, SR)  # load_audio's way, all at once
    assert streamed.shape == whole.shape
    assert (streamed - whole).abs().max() < 1e-5


# ----------------------------------------------------------------------------- scores: golden

def golden_scores(model, wave, start, length, window_samples):
    """Scores of one window by hand: torchaudio's Kaldi fbank, zero padding, normalization, model."""
    seg = wave[start:start + length]
    fb = fbank_reference(seg, SR, num_mel_bins=16)  # (frames, 16)
    fb = F.pad(fb, (0, 0, 0, FEATURES.target_length - fb.shape[0]))
    x = (fb - FEATURES.mean) / (2 * FEATURES.std)
    with torch.no_grad():
        return model(x[None]).sigmoid()[0]


def test_scores_equal_a_direct_model_call_on_each_window(tmp_path, ckpt, predictor):
    path = tmp_path / "clip.wav"
    sf.write(path, noise(2.0), SR, subtype="FLOAT")
    run = predict(predictor, [path], hop=0.3, top_k=3, progress=False)
    (res,) = run.files
    assert run.settings["window"] == pytest.approx(0.64)  # 64 frames of 10 ms
    # 2 s = 32000 samples; 10240-sample windows every 4800: 5 full ones, then one of 8000 samples
    assert res.starts.tolist() == [0, 4800, 9600, 14400, 19200, 24000]
    assert res.lengths.tolist() == [10240] * 5 + [8000]
    assert res.padded.tolist() == [False] * 5 + [True]
    assert res.end_times[-1] == pytest.approx(2.0)
    model = tiny_classifier()
    wave = load_audio(path)
    for i, (s, n) in enumerate(zip(res.starts, res.lengths)):
        ref = golden_scores(model, wave, int(s), int(n), 10240)
        order = ref.argsort(descending=True)
        assert res.top_index[i].tolist() == order.tolist()
        assert np.abs(res.top_score[i] - ref[order].numpy()).max() < 1e-4


def test_activation_rules():
    assert resolve_activation("auto", True) == "sigmoid"
    assert resolve_activation("auto", False) == "softmax"
    assert resolve_activation("auto", None) == "softmax"
    assert resolve_activation("softmax", True) == "softmax"
    with pytest.raises(ValueError, match="unknown activation"):
        resolve_activation("relu", True)


def test_released_file_gets_its_recipe_or_what_is_given(fixtures, tmp_path, capsys):
    """A released fine-tuned file stores neither input length nor normalization: its 35 outputs are
    the Speech Commands recipe's, whose normalization it gets, said once; the options override."""
    src = str(fixtures / "ast_tiny224_f10_t10_t100_label35.pth")
    sf.write(tmp_path / "a.wav", noise(1.5), SR)
    out = tmp_path / "p.json"
    assert main(["predict", src, str(tmp_path / "a.wav"), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("assumed") == 1 and "speechcommands normalization" in err
    feats = json.loads(out.read_text())["settings"]["features"]
    assert (feats["mean"], feats["std"]) == (-6.845978, 5.5654526)
    assert 96 <= feats["target_length"] <= 105  # the frames that give the file's 12 x 9 grid
    assert json.loads(out.read_text())["settings"]["activation"] == "softmax"  # single-label recipe
    assert main(["predict", src, str(tmp_path / "a.wav"), "--out", str(out), "--no-progress", "--device", "cpu",
                 "--target-length", "100", "--mean", "-5", "--std", "3"]) == 0
    feats = json.loads(out.read_text())["settings"]["features"]
    assert (feats["mean"], feats["std"], feats["target_length"]) == (-5.0, 3.0, 100)
    assert main(["predict", src, str(tmp_path / "a.wav"), "--out", str(out), "--no-progress", "--device", "cpu",
                 "--preset", "audioset"]) == 0
    feats = json.loads(out.read_text())["settings"]["features"]
    assert (feats["mean"], feats["target_length"]) == (-4.2677393, 1024)


def test_softmax_model_and_label_csv(tmp_path):
    path = tmp_path / "nometa.pt"
    save_checkpoint(tiny_classifier(), path, features=FEATURES.to_dict())  # no labels, no meta: softmax
    p = Predictor.from_checkpoint(path, device="cpu")
    assert p.activation == "softmax" and p.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    wav = tmp_path / "a.wav"
    sf.write(wav, noise(1.0), SR)
    (res,) = predict(p, [wav], top_k=3, progress=False).files
    assert np.allclose(res.top_score.sum(axis=1), 1, atol=1e-5)
    csv_path = tmp_path / "class_labels_indices.csv"
    csv_path.write_text('index,mid,display_name\n1,/m/b,"Bird, song"\n0,/m/a,Frog\n2,/m/c,Rain\n')
    assert Predictor.from_checkpoint(path, label_csv=csv_path, device="cpu").labels == ["Frog", "Bird, song", "Rain"]
    bad = tmp_path / "two.csv"
    bad.write_text("index,mid,display_name\n0,/m/a,Frog\n1,/m/b,Bird\n")
    with pytest.raises(ValueError, match="names 2 labels, the model has 3 outputs"):
        Predictor.from_checkpoint(path, label_csv=bad, device="cpu")


def test_window_longer_than_the_model_input_is_refused(predictor, tmp_path):
    with pytest.raises(ValueError, match="at most 0.64 s"):
        predict(predictor, [tmp_path], window=1.0, progress=False)


def test_batching_and_prefetch_do_not_change_results(tmp_path, predictor):
    for i, sec in enumerate([1.3, 0.5, 2.2]):
        sf.write(tmp_path / f"f{i}.wav", noise(sec, seed=i), SR)
    a = predict(predictor, [tmp_path], batch_size=1, read_ahead=False, progress=False, threshold=0.3)
    b = predict(predictor, [tmp_path], batch_size=5, progress=False, threshold=0.3)  # windows of two files per batch
    assert [r.path for r in a.files] == [r.path for r in b.files]
    for ra, rb in zip(a.files, b.files):
        assert ra.starts.tolist() == rb.starts.tolist()
        assert np.abs(ra.top_score - rb.top_score).max() < 1e-5
        assert [(d.label, d.start, d.end, d.windows) for d in ra.detections] == \
               [(d.label, d.start, d.end, d.windows) for d in rb.detections]
    assert sum(len(r.detections) for r in a.files) > 0


# ----------------------------------------------------------------------------- detections

def test_merge_detections_by_hand():
    starts = np.arange(8) * 5.0  # windows of 10 s every 5 s
    ends = starts + 10
    ends[-1] = 37.5  # a padded last window
    scores = np.zeros((8, 3))
    scores[[1, 2, 3], 0] = [0.6, 0.9, 0.7]  # one event of label 0 over windows 1-3
    scores[[6, 7], 0] = [0.55, 0.8]  # a second one at the end
    scores[[0, 4], 2] = [0.95, 0.5]  # label 2: windows 0 and 4 (0-10 s and 20-30 s) do not touch
    dets = detect(scores, starts, ends, 0.5, LABELS)
    got = [(d.label, d.start, d.end, round(d.max_score, 6), round(d.mean_score, 6), d.windows) for d in dets]
    assert got == [("frog", 5.0, 25.0, 0.9, round((0.6 + 0.9 + 0.7) / 3, 6), 3),
                   ("frog", 30.0, 37.5, 0.8, 0.675, 2),
                   ("rain", 0.0, 10.0, 0.95, 0.95, 1),
                   ("rain", 20.0, 30.0, 0.5, 0.5, 1)]
    # A 10 s gap allowed: label 2's two windows merge.
    merged = detect(scores, starts, ends, 0.5, LABELS, gap=10.0)
    assert [(d.label, d.start, d.end, d.windows) for d in merged if d.label == "rain"] == [("rain", 0.0, 30.0, 2)]
    # Windows that only touch merge; hop > window leaves gaps that do not.
    touching = merge_detections([0, 1], [1, 1], [0.7, 0.8], [0.0, 10.0], [10.0, 20.0], LABELS)
    assert [(d.start, d.end) for d in touching] == [(0.0, 20.0)]
    apart = merge_detections([0, 1], [1, 1], [0.7, 0.8], [0.0, 15.0], [10.0, 25.0], LABELS)
    assert [(d.start, d.end) for d in apart] == [(0.0, 10.0), (15.0, 25.0)]
    assert merge_detections([], [], [], starts, ends, LABELS) == []


# ----------------------------------------------------------------------------- metadata

def test_parse_audiomoth_comments():
    p = parse_audiomoth_comment(AUDIOMOTH)
    assert p == {"recorded_at": "2023-05-12T14:23:05+01:00", "device_id": "24E144085F256A23", "gain": "medium",
                 "battery_v": 4.2, "temperature_c": 21.3}
    old = parse_audiomoth_comment("Recorded at 21:00:00 24/02/2019 (UTC) by AudioMoth 0FE081F80FE081F0 at gain "
                                  "setting 2 while battery state was 4.3V.")
    assert old == {"recorded_at": "2019-02-24T21:00:00+00:00", "device_id": "0FE081F80FE081F0", "gain": "2",
                   "battery_v": 4.3}
    low = parse_audiomoth_comment("Recorded at 05:30:00 01/01/2021 (UTC-5:30) by AudioMoth 243B1F075E6B3B9C at "
                                  "high gain while battery was less than 3.6V and temperature was -2.5C.")
    assert low["recorded_at"] == "2021-01-01T05:30:00-05:30"
    assert (low["battery_v"], low["battery_bound"], low["temperature_c"], low["gain"]) == (3.6, "less", -2.5, "high")
    assert parse_audiomoth_comment("a field note") == {}


def test_wav_info_chunk_metadata_in_the_summary(tmp_path, predictor):
    path = tmp_path / "20230512_132305.WAV"
    riff_wav(path, noise(1.5, sr=48000), 48000, {b"ICMT": AUDIOMOTH, b"IART": "AudioMoth 24E144085F256A23"})
    meta = read_metadata(path)
    assert meta["sample_rate"] == 48000 and meta["channels"] == 1 and meta["frames"] == 72000
    assert meta["tags"]["comment"] == AUDIOMOTH  # the raw comment, always
    assert meta["audiomoth"]["device_id"] == "24E144085F256A23"
    assert meta["audiomoth"]["recorded_at"] == "2023-05-12T14:23:05+01:00"
    run = predict(predictor, [path], threshold=0.0, progress=False)  # everything detected
    summary = run.files[0].summary()
    assert summary["metadata"]["audiomoth"]["temperature_c"] == 21.3
    assert summary["duration"] == pytest.approx(1.5)
    frog = summary["labels"]["frog"]
    assert frog["detected"] and frog["first"] == 0.0 and frog["last"] == pytest.approx(1.5)
    assert frog["first_time"] == "2023-05-12T14:23:05+01:00"
    assert frog["last_time"] == "2023-05-12T14:23:06.500000+01:00"


# ----------------------------------------------------------------------------- outputs

def test_three_formats_parse_back(tmp_path, ckpt):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "one.wav", noise(2.0, seed=3), SR)
    riff_wav(audio / "two.wav", noise(1.0, seed=4), SR, {b"ICMT": AUDIOMOTH})
    outs = {}
    for fmt, out in [("csv", tmp_path / "r.csv"), ("json", tmp_path / "r.json"), ("raven", tmp_path / "raven")]:
        assert main(["predict", str(ckpt), str(audio), "--out", str(out), "--hop", "0.32", "--threshold", "0.4",
                     "--top-k", "2", "--no-progress"]) == 0
        outs[fmt] = out
    data = json.loads(outs["json"].read_text())
    assert data["labels"] == LABELS and data["errors"] == []
    files = {f["path"].rsplit("/", 1)[1]: f for f in data["files"]}
    assert set(files) == {"one.wav", "two.wav"}
    assert files["two.wav"]["summary"]["metadata"]["audiomoth"]["gain"] == "medium"
    rows = list(csv.DictReader(outs["csv"].open()))
    assert list(rows[0]) == ["file", "window", "start_s", "end_s", "padded", "label_1", "score_1", "label_2", "score_2"]
    assert len(rows) == sum(len(f["windows"]) for f in data["files"])
    one = [r for r in rows if r["file"].endswith("one.wav")]
    assert [float(r["start_s"]) for r in one] == [w["start"] for w in files["one.wav"]["windows"]]
    assert [float(r["score_1"]) for r in one] == pytest.approx([w["top"][0]["score"] for w in files["one.wav"]["windows"]], abs=1e-6)
    dets = list(csv.DictReader((tmp_path / "r.detections.csv").open()))
    assert len(dets) == sum(len(f["detections"]) for f in data["files"]) > 0
    summary = {r["file"].rsplit("/", 1)[1]: r for r in csv.DictReader((tmp_path / "r.summary.csv").open())}
    assert summary["two.wav"]["device_id"] == "24E144085F256A23" and summary["one.wav"]["status"] == "ok"
    for name in ("one", "two"):
        lines = (outs["raven"] / f"{name}.Table.1.selections.txt").read_text().splitlines()
        header = lines[0].split("\t")
        assert header[:8] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                              "High Freq (Hz)", "Annotation"] and tuple(header) == RAVEN_COLUMNS
        body = [dict(zip(header, ln.split("\t"))) for ln in lines[1:]]
        want = sorted(files[f"{name}.wav"]["detections"], key=lambda d: (d["start"], d["label_index"]))
        assert [(r["Annotation"], float(r["Begin Time (s)"]), float(r["End Time (s)"])) for r in body] == \
               [(d["label"], pytest.approx(d["start"]), pytest.approx(d["end"])) for d in want]
        assert all(r["High Freq (Hz)"] == "8000.0" and r["Selection"] == str(i + 1) for i, r in enumerate(body))
        assert all(r["Begin File"] == f"{name}.wav" and r["File Offset (s)"] == r["Begin Time (s)"] for r in body)


# ----------------------------------------------------------------------------- Raven tables read by crowsetta

def file_result(path, dets, labels=("_silence_", "Bird, song", "Päivä")) -> FileResult:
    """A result with the given detections (label index, start, end, max score) and 1 s windows every 0.5 s."""
    starts = np.arange(0, 20) * 8000
    n = len(starts)
    det = [Detection(labels[i], i, s, e, m, m - 0.1, 3) for i, s, e, m in dets]
    return FileResult(str(path), SR, SR, list(labels), starts, np.full(n, SR), np.zeros((n, 1), dtype=np.int64),
                      np.zeros((n, 1)), np.zeros(len(labels)), det, 0.5, num_samples=int(starts[-1] + SR))


def small_run(results) -> PredictionRun:
    return PredictionRun(list(results), [], list(results[0].labels), {"sample_rate": SR})


CROWSETTA_PANDAS_WARNING = "ignore:The inplace keyword in DataFrame.rename"  # inside crowsetta 5.1.2, harmless


@pytest.mark.filterwarnings(CROWSETTA_PANDAS_WARNING)
def test_raven_tables_load_in_crowsetta(tmp_path):
    crowsetta = pytest.importorskip("crowsetta")
    dets = [(1, 2.5, 4.0, 0.9), (0, 0.0, 1.5, 0.61), (2, 3.0, 9.5, 0.7), (0, 7.0625, 10.0, 0.55)]
    run = small_run([file_result(tmp_path / "rec.wav", dets), file_result(tmp_path / "quiet.wav", [])])
    table, empty = write_raven(run, tmp_path / "out")
    assert table == tmp_path / "out" / "rec.Table.1.selections.txt"
    annot = crowsetta.Transcriber(format="raven").from_file(table, annot_col="Annotation").to_annot()
    want = sorted(dets, key=lambda d: (d[1], d[0]))  # rows in time order
    boxes = annot.bboxes
    assert [b.label for b in boxes] == [run.labels[d[0]] for d in want]
    assert [b.onset for b in boxes] == pytest.approx([d[1] for d in want], abs=1e-9)
    assert [b.offset for b in boxes] == pytest.approx([d[2] for d in want], abs=1e-9)
    assert [(b.low_freq, b.high_freq) for b in boxes] == [(0.0, SR / 2)] * len(want)
    df = crowsetta.formats.bbox.Raven.from_file(table, annot_col="Annotation").df
    assert df["Max Score"].tolist() == pytest.approx([d[3] for d in want])
    assert df["File Offset (s)"].tolist() == pytest.approx([d[1] for d in want])
    assert set(df["Begin Path"]) == {str(tmp_path / "rec.wav")} and set(df["Begin File"]) == {"rec.wav"}
    assert df["Selection"].tolist() == [1, 2, 3, 4] and set(df["View"]) == {"Spectrogram 1"}
    # Raven's own layout: a header row, tab-separated cells without padding, CRLF line ends, UTF-8.
    raw = table.read_bytes()
    lines = raw.decode("utf-8").split("\r\n")
    assert lines[-1] == "" and b"\n" not in raw.replace(b"\r\n", b"") and not raw.startswith(b"\xef\xbb\xbf")
    assert lines[0].split("\t") == list(RAVEN_COLUMNS)
    assert RAVEN_COLUMNS[7] == "Annotation"  # the 8th column: where opensoundscape looks by default
    assert all(c == c.strip() and c for ln in lines[:-1] for c in ln.split("\t"))
    assert empty.read_bytes() == "\t".join(RAVEN_COLUMNS).encode() + b"\r\n"  # no detections: the header only


@pytest.mark.filterwarnings(CROWSETTA_PANDAS_WARNING)
def test_same_name_files_in_two_folders_get_a_table_each(tmp_path):
    crowsetta = pytest.importorskip("crowsetta")
    a, b = tmp_path / "site_a" / "rec.wav", tmp_path / "site_b" / "deep" / "rec.wav"
    run = small_run([file_result(a, [(1, 1.0, 2.0, 0.8)]), file_result(b, [(2, 5.0, 6.5, 0.9), (0, 0.5, 1.0, 0.7)])])
    written = write_raven(run, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == \
           ["site_a/rec.Table.1.selections.txt", "site_b/deep/rec.Table.1.selections.txt"]
    for table, audio, labels in zip(written, (a, b), (["Bird, song"], ["_silence_", "Päivä"])):
        raven = crowsetta.formats.bbox.Raven.from_file(table, annot_col="Annotation")
        assert set(raven.df["Begin Path"]) == {str(audio)}
        assert [x.label for x in raven.to_bbox()] == labels
    # A file that could not be read counts for the mirrored folders too: names do not depend on it being readable.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bad.wav").write_bytes(b"RIFF")
    one = PredictionRun([run.files[0]], [{"path": str(tmp_path / "other" / "bad.wav"), "error": "unreadable"}],
                        run.labels, run.settings)
    assert write_raven(one, tmp_path / "out2") == [tmp_path / "out2" / "site_a" / "rec.Table.1.selections.txt"]
    assert raven_table_names([tmp_path / "x.wav", tmp_path / "x.flac", tmp_path / "y.wav"]) == \
           ["x.Table.1.selections.txt", "x.Table.2.selections.txt", "y.Table.1.selections.txt"]


# ----------------------------------------------------------------------------- bad files and inputs

def test_corrupt_files_are_reported_and_skipped(tmp_path, ckpt, capsys):
    sf.write(tmp_path / "good.wav", noise(1.0), SR)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    (tmp_path / "empty.flac").write_bytes(b"")
    sf.write(tmp_path / "blip.wav", noise(0.01), SR)  # 10 ms: shorter than one 25 ms frame
    sf.write(tmp_path / "zz_nan.wav", np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    out = tmp_path / "r.json"
    assert main(["predict", str(ckpt), str(tmp_path), "--out", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert [f["path"].rsplit("/", 1)[1] for f in data["files"]] == ["good.wav"]
    errors = {e["path"].rsplit("/", 1)[1]: e["error"] for e in data["errors"]}
    assert set(errors) == {"garbage.wav", "empty.flac", "blip.wav", "zz_nan.wav"}
    assert "too short" in errors["blip.wav"] and "NaN" in errors["zz_nan.wav"]
    assert "skipped" in capsys.readouterr().err
    # Nothing usable: nonzero exit, the errors still written.
    assert main(["predict", str(ckpt), str(tmp_path / "garbage.wav"), str(tmp_path / "missing.wav"),
                 "--out", str(out), "--no-progress"]) == 1
    assert {e["path"].rsplit("/", 1)[1] for e in json.loads(out.read_text())["errors"]} == {"garbage.wav", "missing.wav"}


def test_a_file_failing_part_way_keeps_its_first_windows(tmp_path, predictor):
    sf.write(tmp_path / "whole.flac", noise(12.0), SR)
    data = (tmp_path / "whole.flac").read_bytes()
    (tmp_path / "whole.flac").unlink()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])  # the decoder loses sync about 6 s in
    sf.write(tmp_path / "ok.wav", noise(1.0), SR)
    run = predict(predictor, [tmp_path], block_seconds=2.0, progress=False)
    cut, ok = run.files
    assert cut.path.endswith("cut.flac") and cut.error and 0 < cut.duration <= 6.0
    assert cut.end_times.max() <= 6.0 and len(cut.starts) >= 10
    assert ok.error is None and [e["path"] for e in run.errors] == [cut.path]
    assert run.to_dict()["files"][0]["error"] == cut.error


def test_folders_recursion_and_list_file(tmp_path, predictor):
    (tmp_path / "site" / "deep").mkdir(parents=True)
    for rel in ("site/a.wav", "site/deep/b.flac", "c.wav"):
        sf.write(tmp_path / rel, noise(0.5), SR)
    (tmp_path / "site" / "notes.txt").write_text("not audio")
    files, problems = collect_inputs([tmp_path / "site"])
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.wav", "b.flac"] and problems == []
    files, _ = collect_inputs([tmp_path / "site"], recursive=False)
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.wav"]
    lst = tmp_path / "list.txt"
    lst.write_text("# field recordings\nc.wav\n\nsite/deep\nsite/a.wav\nnowhere.wav\n")
    files, problems = collect_inputs([tmp_path / "site" / "a.wav"], list_file=lst)
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.wav", "c.wav", "b.flac"]  # each file once
    assert [p[0].rsplit("/", 1)[1] for p in problems] == ["nowhere.wav"]
    run = predict(predictor, [], list_file=lst, progress=False)
    assert len(run.files) == 3 and [e["path"].rsplit("/", 1)[1] for e in run.errors] == ["nowhere.wav"]


def test_write_refuses_unknown_output_names(tmp_path, predictor):
    sf.write(tmp_path / "a.wav", noise(0.5), SR)
    run = predict(predictor, [tmp_path / "a.wav"], progress=False)
    with pytest.raises(ValueError, match="cannot tell the output format"):
        write(run, tmp_path / "out.xlsx")
    assert write(run, tmp_path / "tables")[0].name == "a.Table.1.selections.txt"
