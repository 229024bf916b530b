"""The model registry: lookup, verified resumable downloads from a local HTTP server, label names.

Files are served from 127.0.0.1 (a thread running http.server, with Range support added in the
test handler) and the registry is pointed at it with SSAST_MIRROR; nothing touches the internet.
"""
import dataclasses
import http.server
import os
import re
import socket
import stat
import threading

import pytest
import torch

from ssast import ASTModel, CheckpointError, ModelConfig, registry, save_released
from ssast.cli import main
from ssast.download import DownloadError
from ssast.prep.speechcommands import SPEECHCOMMANDS_V2_WORDS
from ssast.sources import read_label_csv


# ---------------------------------------------------------------------------- local server
class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the server's folder; answers "Range: bytes=N-" with 206 (SimpleHTTPRequestHandler
    has no ranges). ``server.break_once``: the first transfer stops halfway."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m else 0
        if start >= len(data) and m:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if m else 200)
        if m:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if srv.break_once:
            srv.break_once = False
            body = body[: len(body) // 2]  # then the connection closes: a short read
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.requests, srv.break_once, srv.root = [], False, root
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("SSAST_MIRROR", f"http://127.0.0.1:{srv.server_address[1]}/models/")
    monkeypatch.setenv("SSAST_PRETRAINED_DIR", str(tmp_path / "cache"))
    (root / "models").mkdir()
    srv.models = root / "models"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _tiny_patch_model_file(path):
    """A released-format file with the geometry of SSAST-Tiny-Patch-400 (width 192, 16x16
    patches, pretraining heads), one block deep and on a small input so that it stays small."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_size("tiny", depth=1, fshape=16, tshape=16, fstride=16, tstride=16,
                                input_fdim=32, input_tdim=32, stage="pretrain")
    save_released(ASTModel(config=cfg), path)
    return path


@pytest.fixture
def served_tiny(server):
    return _tiny_patch_model_file(server.models / "SSAST-Tiny-Patch-400.pth")


# ---------------------------------------------------------------------------- downloads
def test_fresh_download_is_verified_atomic_and_readable_by_others(server, served_tiny, tmp_path):
    old = os.umask(0o022)
    try:
        path = registry.fetch("ssast-tiny-patch-400", progress=False)
    finally:
        os.umask(old)
    assert path == tmp_path / "cache" / "SSAST-Tiny-Patch-400.pth"
    assert path.read_bytes() == served_tiny.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the umask applies (mkstemp would give 0600)
    assert not path.with_name(path.name + ".part").exists()
    assert server.requests == [("/models/SSAST-Tiny-Patch-400.pth", None)]
    assert registry.cached("SSAST-Tiny-Patch-400") == path
    registry.fetch("SSAST-Tiny-Patch-400", progress=False)  # present: no second request
    assert len(server.requests) == 1


def test_partial_file_is_resumed_with_a_range_request(server, served_tiny, tmp_path):
    data = served_tiny.read_bytes()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "SSAST-Tiny-Patch-400.pth.part").write_bytes(data[:1000])
    path = registry.fetch("SSAST-Tiny-Patch-400", progress=False)
    assert server.requests == [("/models/SSAST-Tiny-Patch-400.pth", "bytes=1000-")]
    assert path.read_bytes() == data


def test_connection_broken_mid_file_resumes_in_the_same_call(server, served_tiny):
    server.break_once = True
    path = registry.fetch("SSAST-Tiny-Patch-400", progress=False)
    assert path.read_bytes() == served_tiny.read_bytes()
    assert server.requests[0][1] is None and server.requests[1][1] == f"bytes={len(served_tiny.read_bytes()) // 2}-"


def test_complete_part_file_is_not_fetched_again(server, served_tiny, tmp_path):
    # The previous run received every byte but stopped before the rename: the server answers 416.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "SSAST-Tiny-Patch-400.pth.part").write_bytes(served_tiny.read_bytes())
    path = registry.fetch("SSAST-Tiny-Patch-400", progress=False)
    assert path.read_bytes() == served_tiny.read_bytes() and server.requests[0][1].startswith("bytes=")


def test_size_mismatch_is_refused_and_removed(server, served_tiny, tmp_path):
    release = dataclasses.replace(registry.resolve("SSAST-Tiny-Patch-400"), size_bytes=served_tiny.stat().st_size + 1)
    with pytest.raises(CheckpointError, match=r"bytes.*removed") as e:
        registry.fetch(release, progress=False)
    assert "SSAST-Tiny-Patch-400.pth" in str(e.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_non_checkpoint_download_is_refused_and_removed(server, tmp_path):
    (server.models / "SSAST-Tiny-Frame-400.pth").write_bytes(b"<html>quota exceeded</html>" * 50)
    with pytest.raises(CheckpointError, match="refused and removed: not a PyTorch checkpoint"):
        registry.fetch("SSAST-Tiny-Frame-400", progress=False)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_checkpoint_of_another_geometry_is_refused(server, tmp_path):
    # A patch model served under the frame model's name.
    _tiny_patch_model_file(server.models / "SSAST-Tiny-Frame-400.pth")
    with pytest.raises(CheckpointError, match="does not match the release SSAST-Tiny-Frame-400: 16x16 patches"):
        registry.fetch("SSAST-Tiny-Frame-400", progress=False)
    assert not (tmp_path / "cache" / "SSAST-Tiny-Frame-400.pth").exists()


def test_offline_error_names_the_file_and_the_place(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SSAST_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SSAST_PRETRAINED_DIR", str(tmp_path / "cache"))
    with pytest.raises(DownloadError) as e:
        registry.fetch("audioset_10_10_0.4593", progress=False)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert str(tmp_path / "cache" / "audioset_10_10_0.4593.pth") in msg
    assert f"http://127.0.0.1:{port}/audioset_10_10_0.4593.pth" in msg
    assert "SSAST_PRETRAINED_DIR" in msg and "SSAST_MIRROR" in msg


def test_missing_on_the_server_is_an_offline_style_error(server):
    with pytest.raises(DownloadError, match="HTTP 404.*put it at"):
        registry.fetch("SSAST-Base-Frame-250", progress=False)


def test_without_mirror_the_release_url_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv("SSAST_MIRROR", raising=False)
    monkeypatch.setenv("SSAST_PRETRAINED_DIR", str(tmp_path))
    seen = {}

    def fake_download(url, dest, **kw):
        seen.update(url=url, dest=dest, size=kw["size"])
        return dest

    monkeypatch.setattr(registry, "download", fake_download)
    r = registry.resolve("SSAST-Base-Patch-400")
    registry.fetch(r)
    assert seen == {"url": r.url, "dest": tmp_path / r.file, "size": None}
    assert r.url == "https://www.dropbox.com/s/ewrzpco95n9jdz6/SSAST-Base-Patch-400.pth?dl=1"


# ---------------------------------------------------------------------------- lookup
@pytest.mark.parametrize("spelling, name", [
    ("SSAST-Base-Frame-400", "SSAST-Base-Frame-400"),
    ("ssast-base-frame-400.pth", "SSAST-Base-Frame-400"),
    ("  SSAST-BASE-FRAME-400.PTH ", "SSAST-Base-Frame-400"),
    ("audioset_10_10_0.4593", "audioset_10_10_0.4593"),
    ("audioset_10_10_0.4593.pth", "audioset_10_10_0.4593"),
    ("MIT/ast-finetuned-audioset-10-10-0.4593", "audioset_10_10_0.4593"),
    ("mit/ast-finetuned-audioset-10-10-0.450", "audioset_10_10_0.4495"),
    ("ast-finetuned-speech-commands-v2", "speechcommands_10_10_0.9812"),
    ("https://www.dropbox.com/s/q0tbqpwv44pquwy/speechcommands_10_10_0.9812.pth?dl=1", "speechcommands_10_10_0.9812"),
    ("ablation-4", "audio_model_as20k"),
    ("Only Generative Objective", "audio_model_gen"),
])
def test_find_by_any_spelling(spelling, name):
    assert registry.find(spelling).name == name
    assert registry.resolve(spelling).name == name


def test_by_file_and_not_found():
    assert registry.by_file("/data/models/audioset_16_16_0.4422.pth").name == "audioset_16_16_0.4422"
    assert registry.by_file("SSAST-Small-Patch-400.PTH").name == "SSAST-Small-Patch-400"
    assert registry.by_file("my_model.pth") is None
    assert registry.find("SSAST-Huge-Patch-400") is None


def test_unknown_name_suggests_close_matches():
    with pytest.raises(registry.UnknownModelError) as e:
        registry.resolve("SSAST-Base-Patch-40")
    msg = str(e.value)
    assert "SSAST-Base-Patch-40'" in msg and "SSAST-Base-Patch-400" in msg and "ssast models" in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, KeyError)
    with pytest.raises(registry.UnknownModelError, match="audioset_10_10_0.4593"):
        registry.resolve("audioset_10_10_0.459")


def test_table_agrees_with_the_file_names():
    ssast, ast = registry.releases("ssast"), registry.releases("ast")
    assert len(ssast) == 13 and len(ast) == 8
    assert len({r.name for r in registry.RELEASES}) == len({r.file for r in registry.RELEASES}) == 21
    for r in ssast:
        assert r.stage == "pretrain" and r.label_set is None and (r.fstride, r.tstride) == (r.fshape, r.tshape)
        m = re.fullmatch(r"SSAST-(\w+)-(Patch|Frame)-(\d+)", r.name)
        if m:  # the name carries size, patch kind and masked patches
            assert (m[1].lower(), m[2].lower(), int(m[3])) == (r.model_size, r.patch, r.mask_patch)
        assert r.url.endswith(f"/{r.file}?dl=1")
    for r in ast:
        f, t = map(int, re.match(r"\w+?_(\d+)_(\d+)_", r.file).groups())
        assert (r.fstride, r.tstride) == (f, t) and r.hub_id.startswith("MIT/ast-finetuned-")
        assert r.label_dim == (35 if r.label_set == "speechcommands" else 527)
    sc = registry.resolve("speechcommands_10_10_0.9812")
    assert (sc.input_tdim, sc.mean, sc.std) == (128, -6.845978, 5.5654526)
    assert sc.feature_config().target_length == 128


@pytest.mark.parametrize("name", ["SSAST-Tiny-Patch-400", "SSAST-Base-Frame-400", "speechcommands_10_10_0.9812",
                                  "audioset_12_12_0.4467"])
def test_parameter_count_matches_the_model(name):
    r = registry.resolve(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        model = ASTModel(config=r.config())
    assert r.num_parameters == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- labels
def test_audioset_labels_ship_with_the_package():
    ids, names = registry.label_names("audioset")
    assert len(ids) == len(names) == 527 and len(set(ids)) == 527
    assert (ids[0], names[0]) == ("/m/09x0r", "Speech")
    assert names[1] == "Male speech, man speaking"  # quoted field with a comma
    assert read_label_csv(registry.label_csv("audioset")) == (ids, names)  # the project's CSV reader agrees
    assert registry.resolve("audioset_10_10_0.4593").labels() == (ids, names)
    assert registry.resolve("SSAST-Base-Patch-400").labels() is None


def test_speechcommands_labels_in_the_release_model_order():
    ids, names = registry.label_names("speechcommands")
    assert ids == [f"/m/spcmd{i:02d}" for i in range(35)]
    assert sorted(names) == sorted(SPEECHCOMMANDS_V2_WORDS)
    # The AST release's class_labels_indices.csv order (directory order, not alphabetical).
    assert names[:5] == ["backward", "follow", "five", "bed", "zero"] and names[-1] == "one"


def test_unknown_label_set():
    with pytest.raises(ValueError, match="unknown label set 'esc50'"):
        registry.label_names("esc50")


# ---------------------------------------------------------------------------- ssast models
def test_models_command_lists_releases_and_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSAST_PRETRAINED_DIR", str(tmp_path))
    monkeypatch.delenv("SSAST_MIRROR", raising=False)
    _tiny_patch_model_file(tmp_path / "SSAST-Tiny-Patch-400.pth")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and not line.startswith("cache:")}
    assert len(rows) == 21
    assert rows["SSAST-Tiny-Patch-400"] == ["SSAST-Tiny-Patch-400", "ssast", "tiny",
                                            f"{registry.resolve('SSAST-Tiny-Patch-400').num_parameters / 1e6:.1f}M",
                                            "16x16", "16x16", "1024", "-", "yes"]
    assert rows["speechcommands_10_10_0.9812"][-4:] == ["128", "speechcommands", "(35)", "-"]
    assert rows["SSAST-Base-Frame-400"][4:6] == ["128x2", "128x2"]
    assert f"cache: {tmp_path}" in out

    assert main(["models", "--family", "ast"]) == 0
    assert "SSAST-" not in capsys.readouterr().out


def test_models_command_describes_downloads_and_rejects(server, served_tiny, tmp_path, capsys):
    assert main(["models", "MIT/ast-finetuned-speech-commands-v2"]) == 0
    out = capsys.readouterr().out
    assert "speechcommands_10_10_0.9812.pth" in out and "-6.845978" in out and "12x12 patches" in out

    assert main(["models", "SSAST-Tiny-Patch-400", "--download", "--no-progress"]) == 0
    assert (tmp_path / "cache" / "SSAST-Tiny-Patch-400.pth").read_bytes() == served_tiny.read_bytes()
    assert str(tmp_path / "cache" / "SSAST-Tiny-Patch-400.pth") in capsys.readouterr().out

    assert main(["models", "SSAST-Tiny-Patch-40"]) == 2
    assert "did you mean SSAST-Tiny-Patch-400" in capsys.readouterr().err
