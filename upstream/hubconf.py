"""torch.hub and s3prl entry points for SSAST upstreams.

``torch.hub.load("<checkout>/upstream", "ssast_local", source="local", ckpt="model.pth")``
returns an :class:`expert.UpstreamExpert`. The same entries work inside s3prl's hub (see
README.md), whose runner calls every upstream as ``entry(ckpt=..., model_config=..., refresh=...)``.

``window_secs``: the length of the windows the audio is cut into; s3prl's advice is 1 s for
speech commands, 6 s for IEMOCAP and 10 s for speaker identification. When it is not given, it
comes from the ``model_config`` YAML file, else 1 s.
"""
# Helper names start with "_": torch.hub and s3prl's hub list every other callable as an entry.
import importlib.util as _importlib_util
import os as _os

dependencies = ["torch", "torchaudio", "timm", "ssast"]
__all__ = ["ssast_frame_base", "ssast_patch_base", "ssast_frame_base_local", "ssast_patch_base_local", "ssast_local"]

# expert.py is loaded by path under a name of its own. This works however this file is imported:
# torch.hub runs it as a top-level module (under two names, "hubconf.py" and "hubconf"), s3prl as a
# submodule of its package; and a bare "import expert" could pick up another hub's module.
_spec = _importlib_util.spec_from_file_location(
    "ssast_upstream_expert", _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "expert.py")
)
_expert = _importlib_util.module_from_spec(_spec)
_spec.loader.exec_module(_expert)
_UpstreamExpert = _expert.UpstreamExpert

# The released SSAST models (Gong et al., AAAI 2022), at the addresses s3prl downloads them from.
_RELEASED = {
    "patch": ("SSAST-Base-Patch-400.pth", "https://www.dropbox.com/s/ewrzpco95n9jdz6/SSAST-Base-Patch-400.pth?dl=1"),
    "frame": ("SSAST-Base-Frame-400.pth", "https://www.dropbox.com/s/nx6nl4d4bl71sm8/SSAST-Base-Frame-400.pth?dl=1"),
}


def _released_file(kind: str, refresh: bool) -> str:
    """Path of a released checkpoint in ssast's cache, downloaded if missing (or if ``refresh``)."""
    from ssast.download import cache_dir, download, source_url

    name, url = _RELEASED[kind]
    url = source_url(url, name)  # $SSAST_MIRROR/<name> when a mirror is set
    dest = cache_dir() / name
    if refresh and dest.exists():
        # Fetch next to the old file and swap, so that a failed download leaves it in place.
        fresh = dest.with_name(f".{name}.refresh")
        if fresh.exists():
            fresh.unlink()
        download(url, fresh)
        _os.replace(fresh, dest)
        return str(dest)
    return str(download(url, dest))


def _released(kind: str, refresh: bool, ckpt, **kwargs):
    if ckpt is not None:
        raise ValueError(
            f"ssast_{kind}_base uses the released {_RELEASED[kind][0]}; for a checkpoint file of your "
            f"own use ssast_{kind}_base_local or ssast_local"
        )
    return _UpstreamExpert(_released_file(kind, refresh), expect=kind, **kwargs)


def ssast_frame_base(refresh: bool = False, window_secs: float | None = None, *, ckpt=None, model_config=None):
    """The released SSAST-Base-Frame-400 model (downloaded into ssast's cache on first use)."""
    return _released("frame", refresh, ckpt, window_secs=window_secs, model_config=model_config)


def ssast_patch_base(refresh: bool = False, window_secs: float | None = None, *, ckpt=None, model_config=None):
    """The released SSAST-Base-Patch-400 model (downloaded into ssast's cache on first use)."""
    return _released("patch", refresh, ckpt, window_secs=window_secs, model_config=model_config)


def ssast_frame_base_local(ckpt, window_secs: float | None = None, *, model_config=None, refresh: bool = False):
    """A frame-model checkpoint file, e.g. a local copy of SSAST-Base-Frame-400.pth."""
    return _UpstreamExpert(ckpt, model_config, window_secs, expect="frame")


def ssast_patch_base_local(ckpt, window_secs: float | None = None, *, model_config=None, refresh: bool = False):
    """A patch-model checkpoint file, e.g. a local copy of SSAST-Base-Patch-400.pth."""
    return _UpstreamExpert(ckpt, model_config, window_secs, expect="patch")


def ssast_local(ckpt, window_secs: float | None = None, *, model_config=None, refresh: bool = False):
    """Any SSAST/AST checkpoint file; patch or frame model and its size are read from the file."""
    return _UpstreamExpert(ckpt, model_config, window_secs)
