from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "aquatic" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

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
        "dev": [
            "pytest>=7",
            "hypothesis>=6",
            "black>=24",
            "pre-commit>=3",
            "sphinx>=7",
            "nir>=1.0",
            "onnx>=1.14",
            "onnxruntime>=1.16",
        ],
        "demo": ["scikit-learn>=1.2", "tqdm>=4.60", "matplotlib>=3.6"],
        "bench": ["brevitas", "snntorch", "sinabs", "norse"],
        "nir": ["nir>=1.0"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
