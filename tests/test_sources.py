import json
import os

import numpy as np
import pytest
import soundfile as sf

from ssast.sources import SourceError, read_source, validate


def _wav(path, seconds=0.1):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds)), 16000)


def test_forms_and_relative_paths(tmp_path):
    _wav(tmp_path / "a" / "x.wav")
    _wav(tmp_path / "b" / "y.flac")
    folder = read_source(tmp_path)
    assert folder.kind == "folder-per-class" and folder.labels == ["a", "b"]
    assert read_source(tmp_path, labeled=False).kind == "folder"
    (tmp_path / "list.csv").write_text("File,Label\na/x.wav,dog\nb/y.flac,\"cat,dog\"\n")
    csv_src = read_source(tmp_path / "list.csv")
    assert [it.labels for it in csv_src.items] == [("dog",), ("cat", "dog")]
    assert csv_src.items[0].path == str(tmp_path / "a" / "x.wav")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"wav": "a/x.wav", "labels": "/m/1,/m/2"}]}))
    (tmp_path / "class_labels_indices.csv").write_text("index,mid,display_name\n1,/m/2,Two\n0,/m/1,One\n")
    js = read_source(tmp_path / "d.json")  # label CSV found beside the datafile
    assert js.labels == ["/m/1", "/m/2"] and js.display_names == ["One", "Two"]
    assert js.items[0].labels == ("/m/1", "/m/2")


@pytest.mark.parametrize("name,content,match", [
    ("x.txt", "hello", "unknown data source"),
    ("x.csv", "name,label\na.wav,dog\n", "no path column"),
    ("x.json", "[1, 2]", "not a datafile"),
    ("x.json", "{not json", "not a JSON datafile"),
    ("y.json", '{"data": [{"labels": "a"}]}', "entry 0 has no 'wav'"),
])
def test_bad_sources_name_the_file(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(SourceError, match=match) as e:
        read_source(tmp_path / name)
    assert name in str(e.value)


def test_bad_label_csv_and_empty_folder(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": []}))
    (tmp_path / "l.csv").write_text("id,name\n0,a\n")
    with pytest.raises(SourceError, match="index,mid,display_name"):
        read_source(tmp_path / "d.json", label_csv=tmp_path / "l.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no audio files"):
        read_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="no such file"):
        read_source(tmp_path / "nope")


def test_validate_reports_each_problem(tmp_path):
    _wav(tmp_path / "ok.wav")
    (tmp_path / "broken.wav").write_bytes(b"junk")
    (tmp_path / "d.json").write_text(json.dumps({"data": [
        {"wav": "ok.wav", "labels": "/m/1"}, {"wav": "gone.wav", "labels": "/m/1"},
        {"wav": "ok.wav", "labels": "/m/9"}, {"wav": "broken.wav", "labels": "/m/1"}]}))
    (tmp_path / "l.csv").write_text("index,mid,display_name\n0,/m/1,One\n")
    report = validate(read_source(tmp_path / "d.json", label_csv=tmp_path / "l.csv"))
    assert len(report.good) == 1
    problems = dict((p.rsplit("/", 1)[-1] + str(i), q) for i, (p, q) in enumerate(report.bad))
    assert list(problems.values())[0] == "missing file"
    assert "unknown label(s) /m/9" in list(problems.values())[1]
    assert "unreadable audio" in list(problems.values())[2]
    assert "3 bad entries" in report.summary()


# ----------------------------------------------------------------------------- label CSVs

@pytest.mark.parametrize("content,match", [
    ("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n2,/m/c,C\n3,/m/b,B again\n", r"line 5: mid '/m/b' repeats line 3"),
    ("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n1,/m/c,C\n", "line 4: index 1 repeats line 3"),
    ("index,mid,display_name\n0,/m/a,A\none,/m/b,B\n", "line 3: index 'one' is not an integer"),
    ("index,mid,display_name\n0,/m/a,A\n1.5,/m/b,B\n", "line 3: index '1.5' is not an integer"),
    ("index,mid,display_name\n0,/m/a,A\n,/m/b,B\n", "line 3: index '' is not an integer"),
    ("index,mid,display_name\n0,/m/a,A\n1,,B\n", "line 3: empty mid"),
    ("index,mid,display_name\n0,/m/a,A\n1\n", "line 3: empty mid"),
    ("index,display_name\n0,A\n", "line 1: not a label CSV: no mid column"),
    ("mid,display_name\n/m/a,A\n", "line 1: not a label CSV: no index column"),
    ("", "no index or mid column"),
    ("index,mid,display_name\n", "header row only"),
])
def test_label_csv_problems_name_file_and_line(tmp_path, content, match):
    from ssast.sources import read_label_csv

    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(SourceError, match=match) as e:
        read_label_csv(path)
    assert str(e.value).startswith(f"{path}: ")


def test_label_csv_not_utf8_and_good_forms(tmp_path):
    from ssast.sources import read_label_csv

    path = tmp_path / "labels.csv"
    path.write_bytes(b"index,mid,display_name\n0,/m/a,Caf\xc3\xa9\n1,/m/b,Caf\xe9\n")  # line 3 is Latin-1
    with pytest.raises(SourceError, match=r"line 3: not UTF-8 text \(byte 0xe9\)") as e:
        read_label_csv(path)
    assert str(path) in str(e.value)
    # A byte-order mark, quoted names with commas, blank lines, any row order, a missing display name.
    path.write_bytes("\ufeffindex,mid,display_name\r\n1,/m/b,\"Bird, song\"\r\n\r\n0,/m/a,Café\r\n2,/m/c\r\n"
                     .encode("utf-8"))
    assert read_label_csv(path) == (["/m/a", "/m/b", "/m/c"], ["Café", "Bird, song", "/m/c"])


def test_duplicate_mid_is_refused_before_training(tmp_path):
    """A repeated mid used to give one label two output indices and fail mid-run."""
    _wav(tmp_path / "ok.wav")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"wav": "ok.wav", "labels": "/m/1"}]}))
    (tmp_path / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/1,One\n1,/m/1,Again\n")
    with pytest.raises(SourceError, match=r"class_labels_indices.csv: line 3: mid '/m/1' repeats line 2"):
        read_source(tmp_path / "d.json")


# ----------------------------------------------------------------------------- folder scans

def test_folder_scan_problems_are_reported(tmp_path):
    _wav(tmp_path / "dog" / "a.wav")
    _wav(tmp_path / "cat" / "b.wav")
    (tmp_path / "cat" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    (tmp_path / "cat" / "x.wav").mkdir()
    src = read_source(tmp_path)
    assert src.kind == "folder-per-class" and [it.path for it in src.items] == [
        str(tmp_path / "cat" / "b.wav"), str(tmp_path / "dog" / "a.wav")]
    report = validate(src)
    assert len(report.good) == 2
    assert report.bad == [(str(tmp_path / "cat" / "gone.wav"), "broken symbolic link"),
                          (str(tmp_path / "cat" / "x.wav"), "is a directory")]
    assert "2 bad entries" in report.summary() and "gone.wav: broken symbolic link" in report.summary()
    unl = read_source(tmp_path, labeled=False)
    assert validate(unl).bad == report.bad
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    with pytest.raises(SourceError, match="no audio files found.*gone.wav: broken symbolic link"):
        read_source(only_bad)


def test_unreadable_file_and_folder_say_permission_denied(tmp_path):
    _wav(tmp_path / "data" / "ok.wav")
    _wav(tmp_path / "data" / "locked.wav")
    _wav(tmp_path / "data" / "shut" / "inner.wav")
    locked, shut = tmp_path / "data" / "locked.wav", tmp_path / "data" / "shut"
    locked.chmod(0)
    shut.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("chmod 000 does not stop this user from reading (root)")
        report = validate(read_source(tmp_path / "data", labeled=False))
    finally:
        locked.chmod(0o644)
        shut.chmod(0o755)
    assert [it.path for it in report.good] == [str(tmp_path / "data" / "ok.wav")]
    assert sorted(report.bad) == [(str(locked), "permission denied"), (str(shut), "permission denied")]
