"""The generated keyword dataset: Speech Commands V2 layout, ingested by the real recipe."""
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssast.cli import main
from ssast.prep import PrepError, prepare_speechcommands, synth_speech
from ssast.prep.synth import EspeakNotFound, make_noise
from ssast.sources import read_source, validate

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
WORDS = ["yes", "no", "stop"]


def official_split(name: str) -> str:
    """The Speech Commands README's rule, written out here as the reference."""
    speaker = re.sub(r"_nohash_.*$", "", name)
    pct = (int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % (2 ** 27)) * (100.0 / (2 ** 27 - 1))
    return "validation" if pct < 10 else "testing" if pct < 20 else "training"


@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    out = tmp_path_factory.mktemp("synth") / "speech"
    result = synth_speech(out, words=WORDS, per_word=4, repeats=1, seed=3)
    return out, result


@needs_espeak
def test_layout_is_speech_commands_v2(synth_tree):
    out, result = synth_tree
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["_background_noise_"] + sorted(WORDS)
    clips = sorted(p.relative_to(out).as_posix() for w in WORDS for p in (out / w).iterdir())
    assert len(clips) == len(WORDS) * 4
    speakers = {Path(c).name.split("_nohash_")[0] for c in clips}
    assert len(speakers) == 4 == len(result.speakers)
    for c in clips:
        assert re.fullmatch(r"[a-z]+/[0-9a-f]{8}_nohash_\d+\.wav", c)
        info = sf.info(str(out / c))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    # Whole speakers go to valid/test by the official hashing rule, at least one speaker each.
    lists = {s: (out / f).read_text().split() for s, f in (("validation", "validation_list.txt"),
                                                            ("testing", "testing_list.txt"))}
    for split, names in lists.items():
        assert names == sorted(c for c in clips if official_split(Path(c).name) == split) and names
    noises = list((out / "_background_noise_").glob("*.wav"))
    assert len(noises) >= 4 and all(sf.info(str(p)).duration >= 10 for p in noises)


@needs_espeak
def test_clips_hold_speech_over_the_noise(synth_tree):
    out, _ = synth_tree
    for p in sorted(out.glob("*/*_nohash_*.wav")):
        x, _ = sf.read(str(p))
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)  # 10 ms frames
        energy = np.sort((frames ** 2).mean(axis=1))
        assert np.abs(x).max() > 0.1
        # The loudest frames (the word) stand well above the quietest (noise or floor).
        assert energy[-5:].mean() > 3 * energy[:20].mean()


@needs_espeak
def test_speechcommands_recipe_ingests_it_unchanged(synth_tree, tmp_path):
    out, result = synth_tree
    res = prepare_speechcommands(tmp_path / "prepared", root=out)
    assert res.problems == []
    srcs = {s: read_source(tmp_path / "prepared" / f"speechcommand_{s}_data.json") for s in ("train", "valid", "eval")}
    assert srcs["train"].display_names == sorted(WORDS)
    assert sum(len(s.items) for s in srcs.values()) == len(WORDS) * 4
    assert {s: len(v.items) for s, v in srcs.items()} == \
        {"train": result.clips["training"], "valid": result.clips["validation"], "eval": result.clips["testing"]}
    for s in srcs.values():
        assert s.items and not validate(s).bad
        for it in s.items:
            assert s.display_names[s.labels.index(it.labels[0])] == Path(it.path).parent.name


@needs_espeak
def test_deterministic_for_a_seed(tmp_path):
    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    kw = dict(words=["go", "up"], per_word=3, repeats=1)
    synth_speech(tmp_path / "a", seed=7, **kw)
    synth_speech(tmp_path / "b", seed=7, workers=1, **kw)
    synth_speech(tmp_path / "c", seed=8, **kw)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    out = tmp_path_factory.mktemp("synth") / "speech"
    result = synth_speech(out, words=["yes", "no"], per_word=6, repeats=2, seed=5, silence_clips=12,
                          unknown_clips=12, unlabeled_clips=30)
    return out, result


def _energy_db(x: np.ndarray) -> np.ndarray:
    frames = x[: len(x) // 160 * 160].reshape(-1, 160).astype(np.float64)
    return 10 * np.log10((frames ** 2).mean(axis=1) + 1e-12)


@needs_espeak
def test_silence_unknown_and_unlabeled_pool(full_tree, tmp_path):
    out, result = full_tree
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == \
        ["_background_noise_", "_silence_", "_unknown_", "_unlabeled_", "no", "yes"]
    assert result.classes == {"yes": 6, "no": 6, "_silence_": 12, "_unknown_": 12} and result.unlabeled == 30
    speakers = {s.id for s in result.speakers}
    # Unknown clips are other words by the labelled speakers, so they split with their speaker.
    for p in (out / "_unknown_").iterdir():
        assert p.name.split("_nohash_")[0] in speakers
    # Silence has no word: no frame stands far above the clip's own median (speech rises 20+ dB).
    for p in sorted((out / "_silence_").iterdir()):
        e = _energy_db(sf.read(str(p))[0])
        assert e.max() - np.median(e) < 12, p
        assert re.fullmatch(r"[0-9a-f]{8}_nohash_0\.wav", p.name)
    # The pool: 1 to 4 s clips, most of them speech, some noise alone, none in the lists or datafiles.
    pool = sorted((out / "_unlabeled_").iterdir())
    assert len(pool) == 30 and all(re.fullmatch(r"pool_\d{5}\.wav", p.name) for p in pool)
    durations = [sf.info(str(p)).duration for p in pool]
    assert min(durations) >= 1.0 and max(durations) <= 4.0 and max(durations) > 1.5
    spoken = sum(np.ptp(_energy_db(sf.read(str(p))[0])) > 20 for p in pool)
    assert 20 <= spoken < 30
    listed = (out / "validation_list.txt").read_text() + (out / "testing_list.txt").read_text()
    assert "_unlabeled_" not in listed
    res = prepare_speechcommands(tmp_path / "p", root=out)
    srcs = [read_source(tmp_path / "p" / f"speechcommand_{s}_data.json") for s in ("train", "valid", "eval")]
    assert srcs[0].display_names == ["_silence_", "_unknown_", "no", "yes"] and res.problems == []
    assert sum(len(s.items) for s in srcs) == 36
    assert not any("_unlabeled_" in it.path for s in srcs for it in s.items)


@needs_espeak
def test_cli_classes_and_pool(tmp_path, capsys):
    assert main(["synth-speech", str(tmp_path / "s"), "--words", "go", "--per-word", "3", "--repeats", "1",
                 "--silence", "2", "--unknown", "3", "--unlabeled", "4", "--num-workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "8 clips of 1 words (2 _silence_, 3 _unknown_) by 3 speakers" in out and "4 unlabeled clips" in out
    assert len(list((tmp_path / "s" / "_unlabeled_").glob("*.wav"))) == 4


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(EspeakNotFound, match="apt-get install espeak-ng"):
        synth_speech(tmp_path / "s")
    assert main(["synth-speech", str(tmp_path / "s2")]) == 2
    assert "apt-get install espeak-ng" in capsys.readouterr().err


@needs_espeak
def test_refuses_non_empty_folder_and_too_few_speakers(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(PrepError, match="not empty"):
        synth_speech(tmp_path / "x")
    with pytest.raises(PrepError, match="at least 3"):
        synth_speech(tmp_path / "y", per_word=4, repeats=2)


@needs_espeak
def test_cli(tmp_path, capsys):
    assert main(["synth-speech", str(tmp_path / "s"), "--words", "left", "right", "--per-word", "3",
                 "--repeats", "1", "--seed", "1"]) == 0
    assert "6 clips of 2 words by 3 speakers" in capsys.readouterr().out
    assert main(["prep", "speechcommands", str(tmp_path / "p"), "--root", str(tmp_path / "s")]) == 0
    assert len(read_source(tmp_path / "p" / "speechcommand_train_data.json").items) >= 2


def test_noise_spectra():
    """Pink and brown noise fall by about 3 and 6 dB per octave (power ~ 1/f and 1/f**2)."""
    rng = np.random.default_rng(0)
    for kind, slope in (("white_noise", 0.0), ("pink_noise", -1.0), ("brown_noise", -2.0)):
        x = make_noise(kind, 20.0, rng)
        assert abs(np.sqrt(np.mean(x.astype(np.float64) ** 2)) - 1) < 1e-3
        seg = x[: len(x) // 1024 * 1024].reshape(-1, 1024)
        power = (np.abs(np.fft.rfft(seg * np.hanning(1024), axis=1)) ** 2).mean(axis=0)
        f = np.fft.rfftfreq(1024, 1 / 16000)
        band = (f > 100) & (f < 6000)
        fitted = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
        assert abs(fitted - slope) < 0.15, (kind, fitted)


@needs_espeak
def test_prep_data_wrappers(tmp_path):
    """The shell wrappers parse, and synth_speech.sh generates and prepares the set."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    for script in sorted((repo / "prep_data").glob("*.sh")):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    bindir = Path(sys.executable).parent
    if not (bindir / "ssast").exists():
        pytest.skip("the ssast console script is not installed beside this Python")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", str(repo / "prep_data" / "synth_speech.sh"), str(tmp_path / "s"), "--words", "on",
                        "off", "--per-word", "3", "--repeats", "1"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(read_source(tmp_path / "s" / "speechcommand_eval_data.json").items) == 2
