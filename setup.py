from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "aquatic" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

DEMO = ["scikit-learn>=1.2", "tqdm>=4.60", "matplotlib>=3.6"]
NIR = ["nir>=1.0"]
ONNX = ["onnx>=1.14", "onnxruntime>=1.16"]
# Writing lava-dl's netx HDF5 networks (aquatic.hw.loihi.export(model, path=...)).
LOIHI = ["h5py>=3"]
# Reference implementations the tests compare against: SynSense's Xylo simulator, and
# the snnTorch and sinabs neuron conventions.
REFERENCE = ["xylosim", "snntorch", "sinabs"]
# The fused LIF's forward loop compiled (aquatic.functional.neurons_jit).
FAST = ["numba>=0.59"]
# The tests exercise the demo, both interop formats and the references: dev has them all.
DEV = ["pytest>=7", "hypothesis>=6", "black>=24", "pre-commit>=3", "sphinx>=7"]

setup(
    name="aquatic",
    version=version["__version__"],
    description="Quantization-aware training for conventional and spiking networks in PyTorch",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["aquatic", "aquatic.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy"],
    extras_require={
        "dev": DEV + DEMO + NIR + ONNX + REFERENCE + LOIHI + FAST,
        "fast": FAST,
        "reference": REFERENCE,
        "demo": DEMO,
        "bench": ["brevitas", "snntorch", "sinabs", "norse", "spikingjelly"],
        "nir": NIR,
        "onnx": ONNX,
        "loihi": LOIHI,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
