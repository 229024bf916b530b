"""The s3prl upstream in upstream/: features, hidden-state layout, window placement and timing,
s3prl's own ssast upstream as the reference, s3prl's Featurizer at SUPERB's clip lengths, and the
torch.hub entries (downloads run on file:// URLs)."""
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torchaudio.compliance import kaldi

from conftest import REPO, load_pt, rel_err
from ssast import ASTModel, CheckpointError, ModelConfig, read_checkpoint, save_released

UPSTREAM = REPO / "upstream"
TIMM_REFERENCE = REPO / ".reference" / "timm045"
SR = 16000
HAVE_S3PRL = importlib.util.find_spec("s3prl") is not None
needs_s3prl = pytest.mark.skipif(not HAVE_S3PRL, reason="s3prl is not installed (run scripts/install_reference.sh)")


@pytest.fixture(scope="module")
def hub():
    """upstream/hubconf.py, imported the way torch.hub imports it (a top-level module of its own)."""
    spec = importlib.util.spec_from_file_location("ssast_test_hubconf", UPSTREAM / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ckpts(fixtures):
    return {kind: str(fixtures / f"ssast_tiny_{kind}_pretrain_t1024.pth") for kind in ("patch", "frame")}


@pytest.fixture(scope="module")
def small_ckpts(tmp_path_factory):
    """Released-format pretraining files of a 3-block, 64-wide model with random weights, in the
    geometry s3prl expects (128 mel bins, 16x16 patches or 128x2 frames, 1024-frame grid)."""
    out = tmp_path_factory.mktemp("small_upstream")
    paths = {}
    for kind, (fshape, tshape) in {"patch": (16, 16), "frame": (128, 2)}.items():
        cfg = ModelConfig(embed_dim=64, depth=3, num_heads=2, num_prefix_tokens=2, fshape=fshape, tshape=tshape,
                          fstride=fshape, tstride=tshape, input_fdim=128, input_tdim=1024, model_size="custom")
        torch.manual_seed(0)
        paths[kind] = str(out / f"small_{kind}.pth")
        save_released(ASTModel(config=cfg), paths[kind])
    return paths


def make_wavs(*seconds, seed=0):
    """Clips of a tone, noise and a DC offset (which s3prl's features never remove)."""
    g = torch.Generator().manual_seed(seed)
    wavs = []
    for i, s in enumerate(seconds):
        n = int(s * SR)
        t = torch.arange(n) / SR
        wavs.append(0.3 * torch.sin(2 * torch.pi * (220 + 110 * i) * t) + 0.1 * torch.randn(n, generator=g) + 0.05)
    return wavs


def s3prl_features(window: torch.Tensor, target_length: int) -> torch.Tensor:
    """s3prl's ssast preprocessing, written out with torchaudio: Kaldi fbank of the raw window (no
    mean removal), AudioSet normalization, then zero padding to target_length."""
    y = kaldi.fbank(window[None], htk_compat=True, sample_frequency=SR, use_energy=False,
                    window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    y = (y + 4.2677393) / (4.5689974 * 2)
    return torch.nn.functional.pad(y, (0, 0, 0, target_length - y.shape[0]))[:target_length]


# ----------------------------------------------------------------------------- features and layout

def test_features_follow_s3prl_convention(hub, ckpts):
    up = hub.ssast_local(ckpts["patch"], window_secs=1.0)
    clip = make_wavs(1.6)[0]
    windows = torch.nn.functional.pad(clip, (0, 3 * SR - len(clip))).reshape(3, SR)  # tone+DC, tail, silence
    ours = up.features(windows)
    gold = torch.stack([s3prl_features(w, 100) for w in windows])
    assert ours.shape == gold.shape == (3, 100, 128)
    # float32 rounding only: this fbank removes each window's mean first, which Kaldi's per-frame
    # DC removal makes a no-op in exact arithmetic, and squares |X| as re^2 + im^2
    assert (ours - gold).abs().max() < 1e-4
    # padded after normalization: the two frames past the 98 of a 1 s window are exactly 0
    assert torch.equal(ours[:, 98:], torch.zeros(3, 2, 128))


@pytest.mark.parametrize("kind, window_secs, rate, f_dim, per_window, offset",
                         [("patch", 1.0, 1600, 12, 9, 1400), ("frame", 0.5, 160, 1, 47, 280)])
def test_hidden_state_layout(hub, ckpts, kind, window_secs, rate, f_dim, per_window, offset):
    up = hub.ssast_local(ckpts[kind], window_secs=window_secs).eval()
    cfg = up.model.config
    assert up.model_type == kind and up.get_downsample_rates() == up.get_downsample_rates("hidden_states") == rate
    assert (cfg.f_dim, cfg.input_tdim) == (f_dim, int(window_secs * 100))
    # A window's real fbank frames (98 of 100 at 1 s, 48 of 50 at 0.5 s) hold 9 patches of 16
    # frames at stride 10, or 47 of 2 at stride 1; the receptive field of a patch spans
    # (tshape - 1) * 160 + 400 samples, and its centre is half that after its start.
    assert (up.steps_per_window, up.offset_samples, up.hop_samples) == (per_window, offset, per_window * rate)
    wav = make_wavs(per_window * rate / SR)[0]  # exactly one window's steps
    window = torch.nn.functional.pad(wav, (offset, up.window_samples - offset - len(wav)))  # (W,)
    with torch.no_grad():
        hs = up([wav])["hidden_states"]
        x = up.features(window[None])
        blocks = up.block_outputs(x)
        final = up.model.encode(x)
    d = cfg.embed_dim
    assert len(hs) == cfg.depth == 12
    assert all(h.shape == (1, per_window, f_dim * d) for h in hs)
    # the blocks' outputs before the final norm
    torch.testing.assert_close(up.model.v.norm(blocks[-1]), final)
    assert not torch.allclose(blocks[-1], final)
    # time step t, frequency patch f of layer l: token P + f * t_dim + t of block l
    p, t_dim = cfg.num_prefix_tokens, cfg.t_dim
    for layer in (0, 5, 11):
        for t in (0, per_window - 1):
            for f in (0, f_dim - 1):
                assert torch.equal(hs[layer][0, t, f * d:(f + 1) * d], blocks[layer][0, p + f * t_dim + t])


def test_windows_and_clips_are_independent(hub, ckpts):
    # 1 s patch windows: window w holds samples [14400 w - 1400, 14400 w + 14600) of the clip and
    # gives steps 9 w .. 9 w + 8. Window 1 is samples 13000 .. 28999, steps 9 .. 17; its patches
    # read fbank frames 0 .. 95, i.e. samples 13000 .. 28599.
    up = hub.ssast_local(ckpts["patch"], window_secs=1.0).eval()
    a, b = make_wavs(2.3, 1.2)
    noise = 0.5 * torch.randn(len(a), generator=torch.Generator().manual_seed(5))
    outside = a.clone()
    outside[:13000], outside[29000:] = noise[:13000], noise[29000:]
    first, last = a.clone(), a.clone()
    first[13000 + 200] += 1.0  # the middle of its first fbank frame
    last[28600 - 200] += 1.0  # the middle of the last frame its patches read
    with torch.no_grad():
        both = up([a, b])["hidden_states"]
        alone_a = up([a])["hidden_states"]
        alone_b = up([b])["hidden_states"]
        edited = up([outside, first, last])["hidden_states"]
    assert both[0].shape == (2, 23, 12 * 192)  # len(range(0, 36800, 1600))
    assert alone_b[0].shape == (1, 12, 12 * 192)  # len(range(0, 19200, 1600))
    for layer in (0, 11):
        assert rel_err(both[layer][0], alone_a[layer][0]) < 1e-5
        assert rel_err(both[layer][1, :12], alone_b[layer][0]) < 1e-5
        # audio outside window 1 changes every step but those of window 1
        assert rel_err(edited[layer][0, 9:18], alone_a[layer][0, 9:18]) < 1e-5
        assert rel_err(edited[layer][0, :9], alone_a[layer][0, :9]) > 1e-2
        assert rel_err(edited[layer][0, 18:], alone_a[layer][0, 18:]) > 1e-2
        # the first and last frames its steps read are in it
        for clip in (1, 2):
            assert rel_err(edited[layer][clip, 9:18], alone_a[layer][0, 9:18]) > 1e-4


def test_released_finetuned_ast_file(hub, fixtures):
    # A released fine-tuned AST model records no strides; s3prl's 10x10 reads its 12 x 9 grid.
    path = fixtures / "ast_tiny224_f10_t10_t100_label35.pth"
    up = hub.ssast_patch_base_local(str(path), window_secs=1.0)
    sd = load_pt(path)
    assert torch.equal(up.model.v.pos_embed.detach(), sd["module.v.pos_embed"])
    assert torch.equal(up.model.v.blocks[3].attn.qkv.weight.detach(), sd["module.v.blocks.3.attn.qkv.weight"])


def test_bad_input_is_refused(hub, ckpts):
    with pytest.raises(ValueError, match="window_secs=0.1 is too short"):
        hub.ssast_local(ckpts["patch"], window_secs=0.1)  # 10 frames < 16-frame patches
    up = hub.ssast_local(ckpts["frame"], window_secs=0.5)
    with pytest.raises(ValueError, match="1-D waveforms"):
        up([torch.zeros(2, SR)])
    with pytest.raises(ValueError, match="no waveforms"):
        up([])
    with pytest.raises(ValueError, match="empty"):
        up([torch.zeros(0)])


# ----------------------------------------------------------------------------- s3prl itself

# (kind, window_secs, steps kept per window, offset in samples). 1 s windows crop the pretrained
# positional grid along time; 6.6 s (patch: 65 > 64 time patches) and 5.5 s (frame: 549 > 512)
# interpolate it. Kept steps: patches wholly inside the window's (W - 400) // 160 + 1 real frames.
REFERENCE_CASES = [("patch", 1.0, 9, 1400), ("frame", 1.0, 97, 280), ("patch", 6.6, 65, 1400), ("frame", 5.5, 547, 280)]
RATES = {"patch": 1600, "frame": 160}

REFERENCE_SCRIPT = textwrap.dedent("""
    import sys, timm, torch
    assert timm.__version__ == "0.4.5", timm.__version__
    from s3prl.upstream.ssast.expert import UpstreamExpert
    cases = torch.load(sys.argv[1])
    out = []
    for ckpt, size, window_secs, segments in cases:
        up = UpstreamExpert(ckpt, size, window_secs).eval()
        with torch.no_grad():
            out.append([h.contiguous() for h in up(segments)["hidden_states"]])
    torch.save(out, sys.argv[2])
""")


def window_segments(wav: torch.Tensor, n_windows: int, window: int, per_window: int, rate: int, offset: int):
    """The audio of each window, cut directly: window w starts per_window * rate * w - offset
    samples into the clip, with zeros before the clip's start and past its end."""
    hop = per_window * rate
    padded = torch.nn.functional.pad(wav, (offset, (n_windows - 1) * hop + window))
    return [padded[w * hop:w * hop + window] for w in range(n_windows)]


@pytest.fixture(scope="module")
def reference_hidden_states(ckpts, tmp_path_factory):
    """s3prl's own ssast upstream, run in a subprocess that sees timm 0.4.5, on every window.

    s3prl places its windows differently (see test_matches_s3prl_ssast_upstream), so it is given
    the audio of each of our windows as a clip of its own: one window, whose steps it computes
    as it always does."""
    if not HAVE_S3PRL:
        pytest.skip("s3prl is not installed (run scripts/install_reference.sh)")
    if not (TIMM_REFERENCE / "timm").is_dir():
        pytest.skip(f"timm 0.4.5 for s3prl's ssast upstream not found at {TIMM_REFERENCE} "
                    "(run scripts/install_reference.sh)")
    tmp = tmp_path_factory.mktemp("s3prl_reference")
    wavs = make_wavs(2.3, 1.2, seed=1)
    cases, layout = [], {}
    for kind, window_secs, per_window, offset in REFERENCE_CASES:
        size = read_checkpoint(ckpts[kind]).config.model_size  # s3prl spells it "<size>_<p|f>"
        rate, window = RATES[kind], int(window_secs * SR)
        steps = len(range(0, max(len(w) for w in wavs), rate))
        n_windows = -(-steps // per_window)
        segments = [s for w in wavs for s in window_segments(w, n_windows, window, per_window, rate, offset)]
        cases.append((ckpts[kind], f"{size}_{kind[0]}", window_secs, segments))
        layout[kind, window_secs] = (n_windows, steps)
    torch.save(cases, tmp / "inputs.pt")
    # timm 0.4.5 first on the path of the subprocess only; everything else comes from the venv
    pythonpath = os.pathsep.join(filter(None, [str(TIMM_REFERENCE), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)
    script = tmp / "reference.py"
    script.write_text(REFERENCE_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(tmp / "inputs.pt"), str(tmp / "out.pt")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"s3prl's ssast upstream failed:\n{run.stderr[-3000:]}"
    reference = {}
    for (kind, window_secs, per_window, _), hidden in zip(REFERENCE_CASES, torch.load(tmp / "out.pt", weights_only=True)):
        n_windows, steps = layout[kind, window_secs]
        # (B * windows, s3prl's steps, f * D) -> the kept steps of each window, in time order
        reference[kind, window_secs] = [
            h[:, :per_window].reshape(len(wavs), n_windows * per_window, -1)[:, :steps] for h in hidden
        ]
    return wavs, reference


@pytest.mark.parametrize("kind, window_secs, per_window, offset", REFERENCE_CASES)
def test_matches_s3prl_ssast_upstream(hub, ckpts, reference_hidden_states, kind, window_secs, per_window, offset):
    """Every window's hidden states are those of s3prl's own upstream on that window's audio.

    What differs, deliberately, is where the windows are. s3prl cuts a clip into non-overlapping
    windows starting at sample 0, but a window gives fewer steps than window / rate (9 of 10 at
    1 s), so from its second window on its steps drift one step per window, and long clips fail
    its Featurizer's length check; and its step k starts, rather than centres, on k * rate. So
    s3prl's upstream defines the computation of one window correctly, and that is what is
    compared: the windows are cut here from the clip, and their kept steps concatenated.
    """
    wavs, reference = reference_hidden_states
    ref = reference[(kind, window_secs)]
    up = hub.ssast_local(ckpts[kind], window_secs=window_secs).eval()
    assert (up.steps_per_window, up.offset_samples) == (per_window, offset)
    with torch.no_grad():
        ours = up(wavs)["hidden_states"]
    assert len(ours) == len(ref) == 12
    for layer, (h, r) in enumerate(zip(ours, ref)):
        assert h.shape == r.shape, f"layer {layer}: {tuple(h.shape)} vs s3prl {tuple(r.shape)}"
        # float32 rounding: fused vs explicit attention, and the fbank's order of operations
        assert rel_err(h, r) < 1e-5, f"layer {layer}: relative error {rel_err(h, r):.2e}"


@needs_s3prl
@pytest.mark.parametrize("kind, rate, width", [("patch", 1600, 12 * 192), ("frame", 160, 192)])
def test_s3prl_featurizer_weighted_sum(hub, ckpts, kind, rate, width):
    from s3prl.upstream.interfaces import Featurizer  # the one s3prl's SUPERB runner uses

    up = hub.ssast_local(ckpts[kind], window_secs=1.0)
    featurizer = Featurizer(up, upstream_device="cpu")
    assert featurizer.layer_num == 12 and featurizer.output_dim == width and featurizer.downsample_rate == rate
    wavs = make_wavs(2.3, 1.2)
    with torch.no_grad():
        out = up(wavs)
    feats = featurizer(wavs, out)  # weighted sum of all layers, cut to each clip's length
    mean = torch.stack(out["hidden_states"]).mean(0)  # the weights start at zero: a plain mean
    assert [f.shape for f in feats] == [(round(len(w) / rate), width) for w in wavs]
    for f, m in zip(feats, mean):
        torch.testing.assert_close(f, m[:len(f)])
    sum(f.sum() for f in feats).backward()
    assert featurizer.weights.grad is not None and torch.isfinite(featurizer.weights.grad).all()


SUPERB_SECONDS = (1.0, 2.0, 3.7, 10.0, 20.0)  # SUPERB's utterances are 1 to 20 s


@needs_s3prl
@pytest.mark.parametrize("window_secs", [1.0, 2.0, 6.0])
@pytest.mark.parametrize("kind", ["patch", "frame"])
def test_s3prl_featurizer_at_every_length(hub, small_ckpts, kind, window_secs):
    from s3prl.upstream.interfaces import Featurizer

    up = hub.ssast_local(small_ckpts[kind], window_secs=window_secs)
    featurizer = Featurizer(up, upstream_device="cpu")
    rate = featurizer.downsample_rate
    wavs = make_wavs(*SUPERB_SECONDS)
    with torch.no_grad():
        batches = [[w] for w in wavs[:-1]] + [wavs]  # every length as the longest clip, then all together
        for batch in batches:
            out = up(batch)
            longest = max(len(w) for w in batch)
            # one step per rate samples of the longest clip, as s3prl counts them
            assert [h.shape[:2] for h in out["hidden_states"]] == [(len(batch), len(range(0, longest, rate)))] * 3
            feats = featurizer(batch, out)  # asserts the length against round(longest / rate)
            assert [len(f) for f in feats] == [round(len(w) / rate) for w in batch]
    assert len(range(0, 20 * SR, rate)) == {"patch": 200, "frame": 2000}[kind]


def steps_changed_most(up, clicks: list[int], num_samples: int) -> list[list[int]]:
    """For each layer: the step that changes most, against a silent clip, when a click is put at
    each sample of ``clicks`` (one clip per click, all clips in one batch)."""
    clips = [torch.zeros(num_samples) for _ in range(len(clicks) + 1)]
    for clip, sample in zip(clips[1:], clicks):
        clip[sample] = 1.0
    with torch.no_grad():
        hs = up(clips)["hidden_states"]
    return [(h[1:] - h[:1]).norm(dim=-1).argmax(dim=1).tolist() for h in hs]  # (clicks,) per layer


@pytest.mark.parametrize("kind, window_secs", [("patch", 1.0), ("patch", 2.0), ("frame", 1.0), ("frame", 2.0)])
def test_click_shows_at_its_step(hub, small_ckpts, kind, window_secs):
    """A click at sample k * rate changes step k most, in every layer, in every window."""
    up = hub.ssast_local(small_ckpts[kind], window_secs=window_secs).eval()
    rate, per_window = up.get_downsample_rates(), up.steps_per_window
    # either side of the first two window boundaries
    early = [0, 1, per_window - 1, per_window, per_window + 1, 2 * per_window - 1, 2 * per_window]
    # later: a step inside the sixth window, 10 s in, and the last step of a 10.5 s clip
    n = int(10.5 * SR)
    late = [5 * per_window + 3, 10 * SR // rate, len(range(0, n, rate)) - 1]
    for ks, num_samples in ((early, (2 * per_window + 2) * rate), (late, n)):
        for layer, found in enumerate(steps_changed_most(up, [k * rate for k in ks], num_samples)):
            assert found == ks, f"layer {layer}: clicks at steps {ks} changed steps {found} most"


# ----------------------------------------------------------------------------- hub entries

def test_torch_hub_load_local(hub, ckpts):
    up = torch.hub.load(str(UPSTREAM), "ssast_local", source="local", ckpt=ckpts["frame"], window_secs=0.5)
    assert up.model_type == "frame" and up.window_secs == 0.5 and up.get_downsample_rates() == 160
    # torch.hub lists every public callable as an entry: only the five entries are public
    assert sorted(n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_")) == sorted(hub.__all__)
    with pytest.raises(CheckpointError, match="expected an SSAST patch model.*frame model"):
        hub.ssast_patch_base_local(ckpts["frame"])
    assert hub.ssast_frame_base_local(ckpts["frame"], window_secs=0.5).model_type == "frame"


def test_importable_as_a_package(ckpts, tmp_path, monkeypatch):
    # s3prl's route for a new upstream: the folder becomes s3prl/upstream/<name>/ and its hub
    # module is star-imported into s3prl.hub.
    (tmp_path / "ssast_upstream_pkg").symlink_to(UPSTREAM, target_is_directory=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("ssast_upstream_pkg.hubconf")
        names = {}
        exec("from ssast_upstream_pkg.hubconf import *", names)
        assert sorted(n for n in names if not n.startswith("__")) == sorted(module.__all__)
        up = module.ssast_local(ckpt=ckpts["frame"], model_config=None, refresh=False)  # as s3prl's runner calls it
        assert up.window_secs == 1.0 and up.model_type == "frame"
    finally:
        for name in [n for n in sys.modules if n.startswith("ssast_upstream_pkg")]:
            del sys.modules[name]


def test_model_config_file(hub, ckpts, tmp_path):
    conf = tmp_path / "upstream.yaml"
    conf.write_text("window_secs: 0.5\n")
    assert hub.ssast_local(ckpts["frame"], model_config=str(conf)).window_secs == 0.5
    assert hub.ssast_local(ckpts["frame"], 0.3, model_config=str(conf)).window_secs == 0.3  # argument wins
    conf.write_text("window_sec: 0.5\n")
    with pytest.raises(ValueError, match="upstream.yaml.*window_sec"):
        hub.ssast_local(ckpts["frame"], model_config=str(conf))


def test_released_entries_download(hub, ckpts, tmp_path, monkeypatch):
    monkeypatch.setenv("SSAST_PRETRAINED_DIR", str(tmp_path / "cache"))
    for kind in ("patch", "frame"):
        name, _ = hub._RELEASED[kind]
        monkeypatch.setitem(hub._RELEASED, kind, (name, f"file://{ckpts[kind]}"))
    up = hub.ssast_frame_base(window_secs=0.5)
    cached = tmp_path / "cache" / "SSAST-Base-Frame-400.pth"
    assert cached.read_bytes() == open(ckpts["frame"], "rb").read() and up.model_type == "frame"
    assert hub.ssast_patch_base().model_type == "patch"

    missing = (tmp_path / "gone.pth").as_uri()
    monkeypatch.setitem(hub._RELEASED, "frame", ("SSAST-Base-Frame-400.pth", missing))
    hub.ssast_frame_base(window_secs=0.5)  # cached: no download
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        hub.ssast_frame_base(refresh=True)
    assert cached.read_bytes() == open(ckpts["frame"], "rb").read()  # a failed refresh keeps the file

    cached.write_bytes(b"not a checkpoint")
    monkeypatch.setitem(hub._RELEASED, "frame", ("SSAST-Base-Frame-400.pth", f"file://{ckpts['frame']}"))
    assert hub.ssast_frame_base(refresh=True, window_secs=0.5).model_type == "frame"

    monkeypatch.setitem(hub._RELEASED, "patch", ("SSAST-Base-Patch-400.pth", f"file://{ckpts['frame']}"))
    (tmp_path / "cache" / "SSAST-Base-Patch-400.pth").unlink()
    with pytest.raises(CheckpointError, match="expected an SSAST patch model"):
        hub.ssast_patch_base()
    with pytest.raises(ValueError, match="ssast_frame_base_local"):
        hub.ssast_frame_base(ckpt=ckpts["frame"])
