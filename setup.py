from pathlib import Path

from setuptools import find_packages, setup

# torch, torchaudio and torchvision are released in lockstep: each torchaudio/torchvision build
# requires one exact torch version, so all three are pinned together (timm needs torchvision).
INSTALL_REQUIRES = [
    "torch==2.11.0",
    "torchaudio==2.11.0",
    "torchvision==0.26.0",
    "timm>=0.9.2,<2",  # the public timm.layers API (tested with 0.9.2 and 1.0.31)
    "numpy>=1.24",
    "soundfile>=0.12",
    "tqdm>=4.60",
    "filelock>=3.12",  # also a torch requirement
    "webdataset==1.0.2",
    "tensorboard>=2.14",
    "safetensors>=0.4",  # Hugging Face model folders
]

# DeepSpeed builds against the installed torch: install it after the rest, without build
# isolation (which would fetch a second torch), e.g.
#   DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed==0.19.8"
# scripts/setup.sh does this.
DEEPSPEED = "deepspeed==0.19.8"

# ONNX export (torch's torch.export-based exporter translates through onnxscript) and ONNX Runtime
# (CPU build) to run and test the exported files.
ONNX = ["onnx==1.23.2", "onnxscript==0.7.2", "onnxruntime==1.31.1"]

setup(
    name="ssast",
    version="0.1.0",
    description="Self-supervised pretraining and fine-tuning of the Audio Spectrogram Transformer",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["ssast", "ssast.*"]),
    # Label names of the released models (AudioSet ontology, Speech Commands V2-35).
    package_data={"ssast": ["data/*.csv"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "hf": ["transformers==5.23.0"],
        "plots": ["matplotlib==3.11.2"],
        "onnx": ONNX,
        "train": [DEEPSPEED],
        # crowsetta reads the Raven tables back in the tests (with the pandas and pandera it was tested with).
        "test": ["pytest>=7", "transformers==5.23.0", "matplotlib==3.11.2", "scikit-learn==1.9.1",
                 "scipy==1.17.1", "crowsetta==5.1.2", "pandas==3.1.1", "pandera==0.35.0", *ONNX],
    },
    entry_points={"console_scripts": ["ssast=ssast.cli:main"]},
)
