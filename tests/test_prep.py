"""Data-preparation recipes on small trees laid out like the real datasets, and safe extraction."""
import copy
import csv
import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from ssast.cli import main
from ssast.prep import (
    ArchiveError,
    PrepError,
    prepare_audioset,
    prepare_esc50,
    prepare_fsd50k,
    prepare_librispeech,
    prepare_speechcommands,
    safe_extract,
    write_mixture,
)
from ssast.prep.common import download, resample_file, sox_available
from ssast.prep.fsd50k import merge_split_zip
from ssast.sources import read_label_csv, read_source, validate


def tone(path, sr=16000, seconds=0.2, freq=440.0, channels=1, subtype="PCM_16"):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype)
    return Path(path)


def file_url(path) -> str:
    return Path(path).resolve().as_uri()


# ---------------------------------------------------------------- safe extraction

def _tar(path, members, mode="w:gz"):
    """members: (TarInfo, bytes or None)."""
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name, data=b"x", mode=0o644):
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _dir(name, mode=0o755):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _special(name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def _cve_2025_4517_members():
    """The PATH_MAX-overflow chain of CPython CVE-2025-4517: 16 nested folders of 247-character
    names, each reachable through a one-letter symlink, so that the short path "a/b/.../p" is
    about 4000 characters once resolved; a link at its end goes 16 levels up, and one more
    ``..`` through it leaves the target, where ``os.path.realpath`` has stopped resolving."""
    comp, steps, path, members = "d" * 247, "abcdefghijklmnop", "", []
    for s in steps:
        members += [_dir(f"{path}{comp}"), _link(f"{path}{s}", comp)]
        path += comp + "/"
    deep_link = "/".join(steps) + "/" + "l" * 254
    members += [_link(deep_link, "../" * len(steps)), _link("escape", deep_link + "/../"),
                _file("escape/flag", b"written outside")]
    return members


def _sentinel(tmp_path):
    """A folder holding the target folder and an 'outside' folder with one file; the state of
    everything in it but the target, to check that an extraction wrote nothing beside it."""
    root = tmp_path / "sentinel"
    (root / "outside").mkdir(parents=True)
    (root / "outside" / "secret.txt").write_bytes(b"secret")
    dest = root / "dest"

    def state():
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):  # never follows symlinks
            if Path(dirpath) == root:
                dirnames.remove("dest") if "dest" in dirnames else None
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                out[str(p)] = p.read_bytes() if p.is_file() and not p.is_symlink() else os.lstat(p).st_mode
        return out

    return root, dest, state


def _assert_refused(archive, dest, state, member, problem):
    before = state()
    with pytest.raises(ArchiveError) as e:
        safe_extract(archive, dest)
    assert e.value.member == member, e.value
    assert problem in e.value.problem, e.value
    assert str(archive) in str(e.value) and repr(member) in str(e.value)
    assert state() == before  # nothing written, linked or changed beside the target folder
    return e.value


HOSTILE_TARS = {
    "absolute": ([_file("ok.txt"), _file("{sentinel}/outside/abs.txt")], "{sentinel}/outside/abs.txt", "absolute"),
    "dotdot": ([_file("ok.txt"), _file("sub/../../outside/evil.txt")], "sub/../../outside/evil.txt", "'..'"),
    "symlink_absolute": ([_link("etc", "{sentinel}/outside")], "etc", "symlink to an absolute path"),
    "symlink_outside": ([_link("up", "../outside")], "up", "symlink pointing outside"),
    # Refused at the link: the file that would go through it never gets a chance.
    "symlink_outside_then_file": ([_link("up", "../outside"), _file("up/evil.txt")], "up", "symlink pointing outside"),
    # Lexically "d/l2/.." is "d", but d/l2 is a link to the root, so its ".." is the parent.
    "symlink_chain": ([_link("d/l2", ".."), _link("l1", "d/l2/..")], "l1", "symlink pointing outside"),
    # The same chain made in the other order: l1 looks harmless while d/l2 is not there yet.
    "symlink_chain_link_first": ([_link("l1", "d/l2/.."), _link("d/l2", "..")], "l1", "extracted after it"),
    # ... and a file written through l1 once d/l2 is there.
    "symlink_chain_then_file": ([_link("l1", "d/l2/../outside"), _link("d/l2", ".."), _file("l1/evil.txt")],
                                "l1/evil.txt", "outside the target folder"),
    "hardlink_outside": ([_link("h", "../outside/secret.txt", tarfile.LNKTYPE)], "h", "hard link pointing outside"),
    "hardlink_absolute": ([_link("h", "{sentinel}/outside/secret.txt", tarfile.LNKTYPE)], "h", "absolute"),
    "hardlink_missing": ([_link("h", "nothing.txt", tarfile.LNKTYPE)], "h", "is not there"),
    "path_max_overflow": (_cve_2025_4517_members(), "escape", "symlink pointing outside"),
    "char_device": ([_special("dev", tarfile.CHRTYPE)], "dev", "special file"),
    "block_device": ([_special("blk", tarfile.BLKTYPE)], "blk", "special file"),
    "fifo": ([_special("fifo", tarfile.FIFOTYPE)], "fifo", "special file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_refused(tmp_path, case):
    root, dest, state = _sentinel(tmp_path)
    members, bad_member, problem = HOSTILE_TARS[case]
    fill = lambda s: s.replace("{sentinel}", str(root))  # noqa: E731
    members = [(copy.copy(info), data) for info, data in members]
    for info, _ in members:
        info.name, info.linkname = fill(info.name), fill(info.linkname)
    archive = _tar(tmp_path / f"{case}.tar.gz", members)
    _assert_refused(archive, dest, state, fill(bad_member), problem)
    if case == "symlink_chain_link_first":  # the link found escaping at the end is removed
        assert not os.path.lexists(dest / "l1") and os.path.islink(dest / "d" / "l2")
    if case == "path_max_overflow":  # it got as far as the links before it: a real test of the chain
        assert os.path.islink(dest / "a") and not os.path.lexists(dest / "escape")


def test_tar_through_existing_symlink_is_refused(tmp_path):
    root, dest, state = _sentinel(tmp_path)
    dest.mkdir()
    (dest / "esc").symlink_to(root / "outside")  # a link already in the target folder
    (dest / "rel").symlink_to("../outside")
    for name, members, problem in [
            ("file", [_file("esc/x.txt")], "outside the target"),
            ("rel", [_file("rel/x.txt")], "outside the target"),
            ("hard", [_link("h", "esc/secret.txt", tarfile.LNKTYPE)], "hard link pointing outside"),
            ("sym", [_link("s", "esc/secret.txt")], "symlink pointing outside")]:
        bad = members[0][0].name
        _assert_refused(_tar(tmp_path / f"{name}.tar", members, mode="w"), dest, state, bad, problem)


def test_benign_tar_with_inside_links_extracts(tmp_path):
    members = [_dir("./"), _dir("top", 0o555), _file("top/a.txt", b"hello"), _link("top/same", "a.txt"),
               _link("top/hard", "top/a.txt", tarfile.LNKTYPE), _link("dirlink", "top"),
               _file("dirlink/b.txt", b"via link"), _link("top/up", "../top/./a.txt"),
               _file("./bin/run", b"#!/bin/sh\n", 0o4755), _file("bin/private", b"p", 0o600),
               _file("bin/shared", b"s", 0o666), _link("top/later", "../late/c.txt"), _file("late/c.txt", b"c"),
               _file("x.txt", b"old"), _link("xh", "x.txt", tarfile.LNKTYPE), _file("xh", b"new")]
    for suffix, mode in ((".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w"), (".tar.bz2", "w:bz2"),
                         (".tar.xz", "w:xz")):
        dest = tmp_path / f"out{suffix}"
        n = safe_extract(_tar(tmp_path / f"good{suffix}", members, mode), dest)
        assert n == len(members)
        assert (dest / "top" / "a.txt").read_bytes() == b"hello"
        assert (dest / "top" / "same").read_bytes() == b"hello" and os.readlink(dest / "top" / "same") == "a.txt"
        assert (dest / "top" / "hard").read_bytes() == b"hello"
        assert os.stat(dest / "top" / "hard").st_ino == os.stat(dest / "top" / "a.txt").st_ino
        assert (dest / "top" / "b.txt").read_bytes() == b"via link"
        assert (dest / "top" / "up").read_bytes() == b"hello" and (dest / "top" / "later").read_bytes() == b"c"
        # A later member of the hard link's name replaces the link, not the file it shared.
        assert (dest / "x.txt").read_bytes() == b"old" and (dest / "xh").read_bytes() == b"new"
        assert stat.S_IMODE(os.stat(dest / "bin" / "run").st_mode) == 0o755  # no setuid
        assert stat.S_IMODE(os.stat(dest / "bin" / "private").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(dest / "bin" / "shared").st_mode) == 0o644  # no group/other write
        assert stat.S_IMODE(os.stat(dest / "top").st_mode) == 0o755  # owner can write into it


def _zip(path, members):
    """members: (name, data, kind) with kind None for a plain entry, or Unix file type bits."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, kind in members:
            info = zipfile.ZipInfo(name)
            if kind is True:
                kind = stat.S_IFLNK | 0o777
            if kind:
                info.create_system, info.external_attr = 3, kind << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize("member,problem", [
    ("../outside/evil.txt", "'..'"), ("{sentinel}/outside/evil.txt", "absolute"),
    ("a\\..\\..\\outside\\evil.txt", "'..'"), ("C:/evil.txt", "absolute"), ("sub/../../evil.txt", "'..'")])
def test_hostile_zip_is_refused_before_anything_is_written(tmp_path, member, problem):
    root, dest, state = _sentinel(tmp_path)
    member = member.replace("{sentinel}", str(root))
    archive = _zip(tmp_path / "bad.zip", [("first.txt", b"1", None), (member, b"evil", None)])
    _assert_refused(archive, dest, state, member, problem)
    assert not (dest / "first.txt").exists()  # all names are checked first


@pytest.mark.parametrize("members,bad,problem", [
    ([("l", b"../../x", True)], "l", "symlink pointing outside"),
    ([("l", b"/etc", True)], "l", "symlink to an absolute path"),
    ([("up", b"..", True), ("up/outside/evil.txt", b"evil", None)], "up", "symlink pointing outside"),
    ([("l1", b"d/l2/..", True), ("d/l2", b"..", True)], "l1", "extracted after it"),
    ([("dev", b"", stat.S_IFCHR | 0o644)], "dev", "special file"),
    ([("fifo", b"", stat.S_IFIFO | 0o644)], "fifo", "special file"),
], ids=["outside", "absolute", "then-file", "chain-link-first", "device", "fifo"])
def test_hostile_zip_symlinks_and_specials(tmp_path, members, bad, problem):
    root, dest, state = _sentinel(tmp_path)
    _assert_refused(_zip(tmp_path / "l.zip", members), dest, state, bad, problem)


def test_zip_through_existing_symlink_and_benign_zip(tmp_path):
    root, dest, state = _sentinel(tmp_path)
    dest.mkdir()
    (dest / "esc").symlink_to(root / "outside")
    _assert_refused(_zip(tmp_path / "w.zip", [("esc/x.txt", b"x", None)]), dest, state, "esc/x.txt",
                    "outside the target")
    ok = _zip(tmp_path / "ok.zip", [("dir/", b"", None), ("dir/a.txt", b"a", None), ("dir/in", b"a.txt", True),
                                    ("run.sh", b"#!/bin/sh\n", stat.S_IFREG | 0o4755), ("dir/in2/b.txt", b"b", None)])
    n = safe_extract(ok, tmp_path / "d4")
    assert n == 5 and (tmp_path / "d4" / "dir" / "a.txt").read_bytes() == b"a"
    assert os.readlink(tmp_path / "d4" / "dir" / "in") == "a.txt"  # a real symlink, inside
    assert (tmp_path / "d4" / "dir" / "in2" / "b.txt").read_bytes() == b"b"
    assert stat.S_IMODE(os.stat(tmp_path / "d4" / "run.sh").st_mode) == 0o755


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match="not a zip or tar"):
        safe_extract(tmp_path / "x.zip", tmp_path / "d")
    with pytest.raises(ArchiveError, match="no such archive"):
        safe_extract(tmp_path / "missing.tar.gz", tmp_path / "d")
    good = _tar(tmp_path / "t.tar.gz", [_file("a.bin", np.random.default_rng(0).bytes(100000))])
    (tmp_path / "cut.tar.gz").write_bytes(good.read_bytes()[:50000])  # a truncated download
    with pytest.raises(ArchiveError) as e:
        safe_extract(tmp_path / "cut.tar.gz", tmp_path / "d")
    assert "cut.tar.gz" in str(e.value) and e.value.member == "a.bin"


def test_cli_extract_reports_the_member(tmp_path, capsys):
    archive = _tar(tmp_path / "bad.tar.gz", [_file("../evil.txt")])
    assert main(["prep", "extract", str(archive), str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "bad.tar.gz" in err and "../evil.txt" in err

# ---------------------------------------------------------------- downloads and resampling

def test_download_is_skipped_when_present(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"first")
    dest = download(file_url(src), tmp_path / "cache" / "a.bin", progress=False)
    assert dest.read_bytes() == b"first"
    src.write_bytes(b"second")
    assert download(file_url(src), dest, progress=False).read_bytes() == b"first"
    with pytest.raises(PrepError, match="--archive"):
        download(file_url(tmp_path / "nope.bin"), tmp_path / "cache" / "b.bin", progress=False)
    assert not (tmp_path / "cache" / "b.bin").exists()


@pytest.mark.parametrize("resampler", ["torchaudio", "sox"])
def test_resample_to_16k_matches_torchaudio(tmp_path, resampler):
    if resampler == "sox" and not sox_available():
        pytest.skip("sox not installed")
    src = tone(tmp_path / "a.wav", sr=44100, seconds=0.5, freq=440.0, channels=2)
    resample_file(src, tmp_path / "b.wav", 16000, resampler)
    y, sr = sf.read(str(tmp_path / "b.wav"), dtype="float32")
    info = sf.info(str(tmp_path / "b.wav"))
    assert sr == 16000 and y.ndim == 1 and info.subtype == "PCM_16" and len(y) == 8000
    x, _ = sf.read(str(src), dtype="float32")
    ref = AF.resample(torch.from_numpy(x.mean(axis=1)), 44100, 16000).numpy()
    mid = slice(400, -400)  # filters differ at the edges
    tol = 1 / 32768 + 1e-6 if resampler == "torchaudio" else 3e-3  # 16-bit rounding; sox's own filter
    assert np.abs(y[mid] - ref[mid]).max() <= tol


# ---------------------------------------------------------------- ESC-50

ESC_CATEGORIES = ["dog", "rooster", "pig", "cow", "frog"]  # targets 0..4 of the real dataset


def make_esc50_zip(tmp_path, corrupt=None):
    base = tmp_path / "src" / "ESC-50-master"
    rows = []
    for i in range(10):
        target, fold = i % 5, i // 2 + 1
        name = f"{fold}-{1000 + i}-A-{target}.wav"
        tone(base / "audio" / name, sr=44100, seconds=0.1, freq=300 + 50 * i)
        rows.append([name, fold, target, ESC_CATEGORIES[target], "False", str(1000 + i), "A"])
    if corrupt:
        (base / "audio" / rows[corrupt][0]).write_bytes(b"RIFF garbage")
    (base / "meta").mkdir()
    with open(base / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    archive = tmp_path / "ESC-50-master.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(base.parent.rglob("*")):
            zf.write(p, p.relative_to(base.parent).as_posix())
    return archive, rows


def test_esc50_recipe(tmp_path):
    archive, rows = make_esc50_zip(tmp_path, corrupt=3)
    out = tmp_path / "esc50"
    res = prepare_esc50(out, url=file_url(archive), resampler="torchaudio")
    assert (out / "downloads" / "ESC-50-master.zip").is_file()  # fetched through the download path
    assert [p for p, _ in res.problems] == [str(out / "ESC-50-master" / "audio" / rows[3][0])]
    with open(out / "class_labels_indices.csv") as f:
        labels = list(csv.DictReader(f))
    assert [(r["index"], r["mid"], r["display_name"]) for r in labels] == \
        [(str(i), f"/m/07rwj{i:02d}", c) for i, c in enumerate(ESC_CATEGORIES)]
    good = [r for i, r in enumerate(rows) if i != 3]
    for k in range(1, 6):
        tr = read_source(out / f"esc_train_data_{k}.json")
        ev = read_source(out / f"esc_eval_data_{k}.json")
        assert tr.labels == [f"/m/07rwj{i:02d}" for i in range(5)] and tr.display_names == ESC_CATEGORIES
        assert sorted(Path(it.path).name for it in ev.items) == sorted(r[0] for r in good if r[1] == k)
        assert sorted(Path(it.path).name for it in tr.items) == sorted(r[0] for r in good if r[1] != k)
        for it in tr.items + ev.items:
            r = next(r for r in good if r[0] == Path(it.path).name)
            assert it.labels == (f"/m/07rwj{r[2]:02d}",)
        assert not validate(tr).bad and not validate(ev).bad
    raw = json.loads((out / "esc_eval_data_1.json").read_text())["data"]
    assert raw[0]["wav"].startswith("audio_16k/")  # relative to the JSON's folder
    info = sf.info(str(out / "audio_16k" / good[0][0]))
    assert info.samplerate == 16000 and info.channels == 1 and info.frames == 1600
    # A second run finds the extracted tree and the resampled files and redoes nothing.
    before = (out / "audio_16k" / good[0][0]).stat().st_mtime_ns
    prepare_esc50(out, url="file:///nonexistent.zip", resampler="torchaudio")
    assert (out / "audio_16k" / good[0][0]).stat().st_mtime_ns == before
    # An interrupted extraction (its marker left behind) is redone.
    (out / "ESC-50-master" / "meta" / "esc50.csv").unlink()
    (out / ".ESC-50-master.zip.extracting").write_text("")
    prepare_esc50(out, resampler="torchaudio")  # the archive is in the download cache
    assert (out / "ESC-50-master" / "meta" / "esc50.csv").is_file()
    assert not list(out.glob(".*.extracting"))


def test_esc50_cli_with_archive(tmp_path, capsys):
    archive, _ = make_esc50_zip(tmp_path)
    assert main(["prep", "esc50", str(tmp_path / "o"), "--archive", str(archive), "--resampler", "torchaudio"]) == 0
    assert "esc_train_data_1.json" in capsys.readouterr().out
    assert main(["prep", "esc50", str(tmp_path / "o2"), "--root", str(tmp_path / "nowhere")]) == 2
    assert "not an ESC-50 tree" in capsys.readouterr().err


# ---------------------------------------------------------------- Speech Commands

def make_speechcommands_tgz(tmp_path):
    root = tmp_path / "sc_src"
    clips = {}
    for w in ("yes", "no", "up"):
        for spk in ("0a1b2c3d", "1f2e3d4c", "99aa88bb"):
            for n in range(2):
                rel = f"{w}/{spk}_nohash_{n}.wav"
                tone(root / rel, seconds=0.05)
                clips[rel] = spk
    tone(root / "_background_noise_" / "white_noise.wav", seconds=0.3)
    (root / "_background_noise_" / "README.md").write_text("noise")
    valid = [r for r, s in clips.items() if s == "1f2e3d4c"]
    test = [r for r, s in clips.items() if s == "99aa88bb"] + ["no/deadbeef_nohash_0.wav"]  # missing file
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "LICENSE").write_text("CC BY 4.0")
    archive = tmp_path / "speech_commands_v0.02.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")  # the official archive has no top-level folder
    return archive, clips, valid, test[:-1]


def test_speechcommands_recipe(tmp_path):
    archive, clips, valid, test = make_speechcommands_tgz(tmp_path)
    out = tmp_path / "sc"
    res = prepare_speechcommands(out, archive=archive)
    assert res.problems == [("testing_list.txt: no/deadbeef_nohash_0.wav", "missing file")]
    words = ["no", "up", "yes"]
    src = {s: read_source(out / f"speechcommand_{s}_data.json") for s in ("train", "valid", "eval")}
    assert src["train"].labels == [f"/m/spcmd{i:02d}" for i in range(3)] and src["train"].display_names == words
    tree = out / "speech_commands_v0.02"

    def rels(s):
        return sorted(Path(it.path).relative_to(tree).as_posix() for it in src[s].items)

    assert rels("valid") == sorted(valid) and rels("eval") == sorted(test)
    assert rels("train") == sorted(set(clips) - set(valid) - set(test))
    for s in src.values():
        for it in s.items:
            assert it.labels == (f"/m/spcmd{words.index(Path(it.path).parent.name):02d}",)
        assert not validate(s).bad
    assert res.counts == {"train": 6, "valid": 6, "eval": 6}


def test_speechcommands_35_words_take_the_official_label_order(tmp_path):
    """With the 35 words of V2, the label ids are the released models' (their CSV's order), not sorted."""
    from ssast.prep.speechcommands import SPEECHCOMMANDS_V2_WORDS
    from ssast.registry import label_names

    root = tmp_path / "sc"
    for i, w in enumerate(SPEECHCOMMANDS_V2_WORDS):
        (root / w).mkdir(parents=True)
        sf.write(str(root / w / f"{i:08x}_nohash_0.wav"), np.zeros(1600, dtype=np.float32), 16000)
    (root / "validation_list.txt").write_text("")
    (root / "testing_list.txt").write_text("")
    prepare_speechcommands(tmp_path / "out", root=root)
    ids, names = read_label_csv(tmp_path / "out" / "class_labels_indices.csv")
    assert (ids, names) == label_names("speechcommands") and names != sorted(names)
    train = read_source(tmp_path / "out" / "speechcommand_train_data.json")
    for it in train.items:
        assert names[ids.index(it.labels[0])] == Path(it.path).parent.name


# ---------------------------------------------------------------- Librispeech

def test_librispeech_recipe(tmp_path):
    src = tmp_path / "src"
    for subset, speakers in (("dev-clean", ("84", "174")), ("test-clean", ("61",))):
        for spk in speakers:
            for utt in range(2):
                tone(src / "LibriSpeech" / subset / spk / "121123" / f"{spk}-121123-{utt:04d}.flac", seconds=0.1)
        with tarfile.open(tmp_path / f"{subset}.tar.gz", "w:gz") as tar:
            tar.add(src / "LibriSpeech" / subset, arcname=f"LibriSpeech/{subset}")
    out = tmp_path / "ls"
    url = (tmp_path / "{subset}.tar.gz").resolve().as_uri().replace("%7B", "{").replace("%7D", "}")
    res = prepare_librispeech(out, subsets=["dev-clean", "test-clean"], url=url)
    assert res.counts == {"dev-clean": 4, "test-clean": 2, "all": 6}
    allsrc = read_source(out / "librispeech_data.json")
    assert not allsrc.labeled and all(it.labels == () for it in allsrc.items)
    assert {Path(it.path).name for it in allsrc.items} == {p.name for p in src.rglob("*.flac")}
    assert not validate(allsrc).bad
    assert json.loads((out / "librispeech_dev-clean.json").read_text())["data"][0]["labels"] == ""
    with pytest.raises(PrepError, match="unknown Librispeech subset"):
        prepare_librispeech(out, subsets=["train-clean-99"])
    # An existing tree given with --root is used as is.
    res = prepare_librispeech(tmp_path / "ls2", subsets=["dev-clean"], root=src)
    assert res.counts["dev-clean"] == 4


# ---------------------------------------------------------------- AudioSet

AS_LABELS = [("/m/09x0r", "Speech"), ("/m/04rlf", "Music"), ("/m/0jbk", "Animal"), ("/m/07yv9", "Vehicle")]


def make_audioset(tmp_path):
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    with open(csvs / "class_labels_indices.csv", "w") as f:
        f.write("index,mid,display_name\n")
        f.writelines(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(AS_LABELS))
    header = "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=3, num_segs=3, num_unique_labels=4, " \
             "num_positive_labels=5\n# YTID, start_seconds, end_seconds, positive_labels\n"
    segs = {
        "balanced_train": [("--PJHxphWEs", 30, "/m/09x0r,/m/04rlf"), ("Yabc_def-12", 10, "/m/0jbk"),
                           ("-0RWZT-miFs", 420, "/m/07yv9")],
        "unbalanced_train": [("--ZhevVpy1s", 50, "/m/04rlf"), ("--PJHxphWEs", 30, "/m/09x0r,/m/04rlf")],
        "eval": [("zzzzzzzzzzz", 0, "/m/09x0r"), ("--4gqARaEJE", 0, "/m/0jbk,/m/07yv9")],
    }
    for split, rows in segs.items():
        with open(csvs / f"{split}_segments.csv", "w") as f:
            f.write(header)
            f.writelines(f'{y}, {s:.3f}, {s + 10:.3f}, "{labs}"\n' for y, s, labs in rows)
    audio = tmp_path / "audio"
    tone(audio / "bal" / "Y--PJHxphWEs.wav", seconds=0.1)          # Y-prefixed dump naming
    tone(audio / "bal" / "YYabc_def-12.flac", seconds=0.1)         # a YTID that itself starts with Y
    tone(audio / "unbal" / "--ZhevVpy1s_50.000_60.000.wav", seconds=0.1)  # with the segment times
    tone(audio / "eval" / "--4gqARaEJE_0_10000.wav", seconds=0.1)  # milliseconds
    (audio / "eval" / "notes.txt").write_text("not audio")
    return csvs, audio, segs


def test_audioset_recipe(tmp_path):
    csvs, audio, segs = make_audioset(tmp_path)
    out = tmp_path / "as"
    url = csvs.resolve().as_uri() + "/{name}"
    res = prepare_audioset(out, [audio / "bal", audio / "unbal", audio / "eval"], url=url)
    assert (out / "downloads" / "eval_segments.csv").is_file()
    bal = read_source(out / "balanced_train_data.json")
    assert bal.labels == [m for m, _ in AS_LABELS] and bal.display_names == [n for _, n in AS_LABELS]
    got = {Path(it.path).name: it.labels for it in bal.items}
    assert got == {"Y--PJHxphWEs.wav": ("/m/09x0r", "/m/04rlf"), "YYabc_def-12.flac": ("/m/0jbk",)}
    assert (out / "missing_balanced_train.txt").read_text() == "-0RWZT-miFs,420.000,430.000\n"
    ev = read_source(out / "eval_data.json")
    assert [(Path(it.path).name, it.labels) for it in ev.items] == \
        [("--4gqARaEJE_0_10000.wav", ("/m/0jbk", "/m/07yv9"))]
    full = read_source(out / "full_train_data.json")
    assert sorted(Path(it.path).name for it in full.items) == ["--ZhevVpy1s_50.000_60.000.wav", "Y--PJHxphWEs.wav",
                                                              "YYabc_def-12.flac"]
    assert res.counts == {"balanced_train": 2, "unbalanced_train": 2, "eval": 1, "full_train": 3}
    assert any("balanced_train: 2 of 3 segments" in n for n in res.notes)
    for s in (bal, ev, full):
        assert not validate(s).bad


def test_audioset_check_audio_and_resample(tmp_path):
    csvs, audio, _ = make_audioset(tmp_path)
    (audio / "bal" / "YYabc_def-12.flac").write_bytes(b"fLaC broken")
    tone(audio / "bal" / "Y--PJHxphWEs.wav", sr=32000, seconds=0.1, channels=2)
    out = tmp_path / "as"
    res = prepare_audioset(out, [audio], splits=["balanced_train"], csv_dir=csvs, check_audio=True, resample=True,
                           resampler="torchaudio")
    assert [Path(p).name for p, _ in res.problems] == ["YYabc_def-12.flac"]
    bal = read_source(out / "balanced_train_data.json")
    assert [Path(it.path) for it in bal.items] == [out / "audio_16k" / "Y--PJHxphWEs.wav"]
    assert sf.info(str(bal.items[0].path)).samplerate == 16000 and sf.info(str(bal.items[0].path)).channels == 1
    assert "full_train" not in res.datafiles


# ---------------------------------------------------------------- FSD50K

def make_fsd50k(tmp_path):
    root = tmp_path / "fsd"
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    vocab = [("Electric_guitar", "/m/02sgy"), ("Guitar", "/m/0342h"), ("Bark", "/m/05tny_"), ("Dog", "/m/0bt9lr")]
    (gt / "vocabulary.csv").write_text("".join(f"{i},{n},{m}\n" for i, (n, m) in enumerate(vocab)))
    dev = [("64760", "Electric_guitar,Guitar", "/m/02sgy,/m/0342h", "train"),
           ("16399", "Bark,Dog", "/m/05tny_,/m/0bt9lr", "train"),
           ("21355", "Dog", "/m/0bt9lr", "val"),
           ("99999", "Dog", "/m/0bt9lr", "train")]  # no audio
    with open(gt / "dev.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", "labels", "mids", "split"])
        w.writerows(dev)
    with open(gt / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", "labels", "mids"])
        w.writerow(["37199", "Guitar", "/m/0342h"])
    for fname, *_ in dev[:3]:
        tone(root / "FSD50K.dev_audio" / f"{fname}.wav", sr=44100, seconds=0.1)
    tone(root / "FSD50K.eval_audio" / "37199.wav", sr=44100, seconds=0.1)
    return root, vocab


def test_fsd50k_recipe(tmp_path):
    root, vocab = make_fsd50k(tmp_path)
    out = tmp_path / "out"
    res = prepare_fsd50k(out, root=root, resampler="torchaudio")
    assert res.problems == [(str(root / "FSD50K.dev_audio" / "99999.wav"), "missing file")]
    tr = read_source(out / "fsd50k_train_data.json")
    assert tr.labels == [m for _, m in vocab] and tr.display_names == [n for n, _ in vocab]
    assert {Path(it.path).name: it.labels for it in tr.items} == \
        {"64760.wav": ("/m/02sgy", "/m/0342h"), "16399.wav": ("/m/05tny_", "/m/0bt9lr")}
    assert [Path(it.path).name for it in read_source(out / "fsd50k_valid_data.json").items] == ["21355.wav"]
    ev = read_source(out / "fsd50k_eval_data.json")
    assert [Path(it.path) for it in ev.items] == [out / "audio_16k" / "eval" / "37199.wav"]
    assert sf.info(str(ev.items[0].path)).samplerate == 16000
    res = prepare_fsd50k(tmp_path / "out2", root=root, resample=False)
    ev = read_source(tmp_path / "out2" / "fsd50k_eval_data.json")
    assert ev.items[0].path == str(root / "FSD50K.eval_audio" / "37199.wav")


def test_fsd50k_split_zip_is_joined_and_extracted(tmp_path):
    import shutil
    import subprocess

    if shutil.which("zip") is None:
        pytest.skip("zip not installed")
    src = tmp_path / "src" / "FSD50K.eval_audio"
    rng = np.random.default_rng(0)
    for i in range(3):  # incompressible, so that the archive spans parts of 64 KiB
        src.mkdir(parents=True, exist_ok=True)
        sf.write(str(src / f"{i}.wav"), rng.uniform(-1, 1, 40000), 16000, subtype="PCM_16")
    subprocess.run(["zip", "-q", "-r", "-s", "64k", str(tmp_path / "FSD50K.eval_audio.zip"), "FSD50K.eval_audio"],
                   cwd=tmp_path / "src", check=True)
    assert (tmp_path / "FSD50K.eval_audio.z01").is_file()
    merged = merge_split_zip(tmp_path / "FSD50K.eval_audio.zip", tmp_path / "merged.zip")
    safe_extract(merged, tmp_path / "x")
    assert sorted(p.name for p in (tmp_path / "x" / "FSD50K.eval_audio").iterdir()) == ["0.wav", "1.wav", "2.wav"]
    assert sf.read(str(tmp_path / "x" / "FSD50K.eval_audio" / "1.wav"))[0].shape == (40000,)


def test_fsd50k_download_join_extract(tmp_path, monkeypatch):
    """The Zenodo path: parts downloaded (file:// URLs here), split zips joined, extracted, prepared."""
    import shutil
    import subprocess

    from ssast.prep import fsd50k

    if shutil.which("zip") is None:
        pytest.skip("zip not installed")
    root, _ = make_fsd50k(tmp_path)
    rng = np.random.default_rng(1)
    for i in range(3):  # incompressible padding, so that the dev zip is split in 64 KiB parts
        sf.write(str(root / "FSD50K.dev_audio" / f"pad{i}.wav"), rng.uniform(-1, 1, 40000), 16000, subtype="PCM_16")
    served = tmp_path / "zenodo"
    served.mkdir()
    archives = {}
    for folder in ("FSD50K.dev_audio", "FSD50K.eval_audio", "FSD50K.ground_truth"):
        split = ["-s", "64k"] if folder == "FSD50K.dev_audio" else []
        subprocess.run(["zip", "-q", "-r", *split, str(served / f"{folder}.zip"), folder], cwd=root, check=True)
        archives[folder] = sorted(p.name for p in served.glob(f"{folder}.z[0-9]*")) + [f"{folder}.zip"]
    assert len(archives["FSD50K.dev_audio"]) > 1  # really a split archive
    monkeypatch.setattr(fsd50k, "FSD50K_ARCHIVES", archives)
    out = tmp_path / "out"
    res = prepare_fsd50k(out, url=served.resolve().as_uri() + "/{name}", resample=False)
    assert res.counts == {"train": 2, "valid": 1, "eval": 1}
    assert read_source(out / "fsd50k_train_data.json").items[0].path.startswith(str(out / "FSD50K.dev_audio"))
    assert (out / ".FSD50K.dev_audio.zip.extracted").is_file()
    shutil.rmtree(served)  # a second run needs nothing from the server
    assert prepare_fsd50k(out, url=served.resolve().as_uri() + "/{name}", resample=False).counts == res.counts


def test_cli_recipes(tmp_path, capsys):
    csvs, audio, _ = make_audioset(tmp_path)
    assert main(["prep", "audioset", str(tmp_path / "as"), "--audio", str(audio), "--csv-dir", str(csvs),
                 "--splits", "eval"]) == 0
    assert "eval: 1 of 2 segments" in capsys.readouterr().out
    root, _ = make_fsd50k(tmp_path)
    assert main(["prep", "fsd50k", str(tmp_path / "fsd"), "--root", str(root), "--no-resample"]) == 0
    assert "fsd50k_valid_data.json" in capsys.readouterr().out
    tone(tmp_path / "raw" / "LibriSpeech" / "test-other" / "1" / "2" / "1-2-0000.flac", seconds=0.1)
    assert main(["prep", "librispeech", str(tmp_path / "ls"), "--root", str(tmp_path / "raw"),
                 "--subsets", "test-other"]) == 0
    assert main(["prep", "librispeech", str(tmp_path / "ls"), "--root", str(tmp_path / "raw"),
                 "--subsets", "dev-other"]) == 2
    assert "dev-other not found" in capsys.readouterr().err


# ---------------------------------------------------------------- pretraining mixture

def test_mixture_weights(tmp_path):
    csvs, audio, _ = make_audioset(tmp_path)
    prepare_audioset(tmp_path / "as", [audio], csv_dir=csvs)
    for i in range(1):
        tone(tmp_path / "ls" / "LibriSpeech" / "dev-clean" / "1" / "2" / f"1-2-{i:04d}.flac", seconds=3.0)
    prepare_librispeech(tmp_path / "ls", subsets=["dev-clean"], root=tmp_path / "ls")
    as_json, ls_json = tmp_path / "as" / "full_train_data.json", tmp_path / "ls" / "librispeech_data.json"
    out = tmp_path / "mix.json"
    mix = write_mixture(out, {"audioset": str(as_json), "librispeech": str(ls_json)})
    assert json.loads(out.read_text()) == mix
    assert mix == {"sources": [{"name": "audioset", "shards": "as/full_train_data.json", "weight": 0.75},
                               {"name": "librispeech", "shards": "ls/librispeech_data.json", "weight": 0.25}]}
    # By hours: 3 x 0.1 s of AudioSet against 3 s of Librispeech.
    mix = write_mixture(out, {"audioset": str(as_json), "librispeech": str(ls_json)}, by="hours")
    assert [s["weight"] for s in mix["sources"]] == [pytest.approx(0.3 / 3.3, abs=1e-6),
                                                     pytest.approx(3 / 3.3, abs=1e-6)]
    mix = write_mixture(out, {"audioset": str(as_json), "librispeech": str(ls_json)},
                        weights={"audioset": 7, "librispeech": 3})
    assert [s["weight"] for s in mix["sources"]] == [0.7, 0.3]


def _shard(path, durations):
    with tarfile.open(path, "w") as tar:
        for i, d in enumerate(durations):
            for ext, data in (("flac", b"fLaC"), ("json", json.dumps({"labels": [], "duration": d}).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_mixture_of_shard_patterns(tmp_path, capsys):
    _shard(tmp_path / "as-000000.tar", [10.0] * 3)
    _shard(tmp_path / "as-000001.tar", [10.0] * 3)
    (tmp_path / "ls").mkdir()
    _shard(tmp_path / "ls" / "ls-000000.tar", [15.0] * 2)
    as_pat, ls_dir = str(tmp_path / "as-{000000..000001}.tar"), str(tmp_path / "ls")
    mix = write_mixture(tmp_path / "m.json", {"audioset": as_pat, "librispeech": ls_dir})
    assert [s["weight"] for s in mix["sources"]] == [0.75, 0.25]
    assert [s["shards"] for s in mix["sources"]] == ["as-{000000..000001}.tar", "ls"]  # relative to m.json
    mix = write_mixture(tmp_path / "m.json", {"audioset": as_pat, "librispeech": ls_dir}, by="hours")
    assert [s["weight"] for s in mix["sources"]] == [pytest.approx(60 / 90), pytest.approx(30 / 90)]
    # A manifest beside the shards is used instead of reading them.
    (tmp_path / "ls" / "manifest.json").write_text(json.dumps({"shards": [{"name": "ls-000000.tar", "clips": 6}],
                                                              "seconds": 180.0}))
    mix = write_mixture(tmp_path / "sub" / "m.json", {"audioset": as_pat, "librispeech": ls_dir})
    assert [s["weight"] for s in mix["sources"]] == [0.5, 0.5] and mix["sources"][0]["shards"] == as_pat
    with pytest.raises(PrepError, match="give the weight"):
        write_mixture(tmp_path / "m.json", {"a": "https://host/shard-{0..9}.tar", "b": ls_dir})
    mix = write_mixture(tmp_path / "m.json", {"a": "https://host/shard-{0..9}.tar", "b": ls_dir},
                        weights={"a": 1, "b": 1})
    assert mix["sources"][0]["shards"] == "https://host/shard-{0..9}.tar"
    assert main(["prep", "mix", str(tmp_path / "c.json"), "--source", f"audioset={as_pat}",
                 "--source", f"librispeech={ls_dir}", "--weight", "audioset=0.9", "--weight", "librispeech=0.1"]) == 0
    assert [s["weight"] for s in json.loads((tmp_path / "c.json").read_text())["sources"]] == [0.9, 0.1]
    assert main(["prep", "mix", str(tmp_path / "d.json"), "--source", f"x={tmp_path / 'none-{0..1}.tar'}"]) == 2
    assert "not found" in capsys.readouterr().err


def test_mixture_of_written_shards_reads_back(tmp_path):
    """The recipe's outputs through the shard writer, mixed, and read by the shard reader."""
    shards = pytest.importorskip("ssast.shards")
    csvs, audio, _ = make_audioset(tmp_path)
    prepare_audioset(tmp_path / "as", [audio], csv_dir=csvs)
    for i in range(2):
        tone(tmp_path / "raw" / "LibriSpeech" / "dev-clean" / "1" / "2" / f"1-2-{i:04d}.flac", seconds=0.5)
    prepare_librispeech(tmp_path / "ls", subsets=["dev-clean"], root=tmp_path / "raw")
    as_sh = shards.write_shards(tmp_path / "as" / "full_train_data.json", tmp_path / "as_shards")
    ls_sh = shards.write_shards(tmp_path / "ls" / "librispeech_data.json", tmp_path / "ls_shards")
    write_mixture(tmp_path / "mix.json", {"audioset": as_sh.pattern, "librispeech": ls_sh.pattern})
    got = shards.read_mixture(tmp_path / "mix.json")
    assert [(s.name, round(s.weight, 6)) for s in got] == [("audioset", 0.6), ("librispeech", 0.4)]
    assert [len(s.shards) for s in got] == [len(as_sh.shards), len(ls_sh.shards)]
    write_mixture(tmp_path / "mixh.json", {"audioset": as_sh.pattern, "librispeech": str(tmp_path / "ls_shards")},
                  by="hours")
    assert [round(s.weight, 6) for s in shards.read_mixture(tmp_path / "mixh.json")] == [0.230769, 0.769231]
