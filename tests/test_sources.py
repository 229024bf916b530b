import json

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
