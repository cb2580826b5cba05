"""Packaging for larq-engrams.

TensorFlow and tf-keras must share one minor version: TensorFlow's `tf.keras` is
redirected to `tf_keras` (Keras 2), which Larq requires. `tensorflow-cpu` must not be
installed beside `tensorflow` (both wheels unpack into the same folder).
"""
from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

TF_MINOR = "2.21"


class OptionalBuildExt(build_ext):
    """Builds the runtime's bit kernels (larq_engrams/csrc/engram_bits.c, loaded with
    ctypes) where a C compiler exists; without one the install goes on and the runtime
    uses its NumPy path, and says so in one line."""

    said = False

    def _say(self, error):
        if not self.said:  # one line, however many steps fail after the compiler
            print(f"larq-engrams: the C bit kernels were not built ({type(error).__name__}); "
                  "the runtime uses its NumPy path.")
            self.said = True

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler, or it failed: the NumPy path still works
            self._say(error)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            self._say(error)

    def get_export_symbols(self, ext):
        return []  # a plain C library for ctypes, not a Python module (no PyInit_ symbol)

setup(
    name="larq-engrams",
    version="0.1.0",
    description=(
        "Continual learning with binarized neural networks: metaplastic optimizers "
        "and stochastic engrams on Larq"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # Namespace packages too: the data folder (no __init__.py) is then a package of its
    # own, which setuptools wants for package data (otherwise one warning per file).
    packages=find_namespace_packages(include=["larq_engrams", "larq_engrams.*"], exclude=["*.__pycache__"]),
    # The real MNIST test set ships with the package: the offline default data source.
    package_data={"larq_engrams.data.mnist": ["*.gz", "README.md"], "larq_engrams.csrc": ["*.c"]},
    # The runtime's kernels (XNOR-popcount, sign-selected sums), a C99 library it loads with ctypes if built.
    ext_modules=[Extension("larq_engrams._engram_bits", ["larq_engrams/csrc/engram_bits.c", "larq_engrams/csrc/signed_sums.c",
                                                         "larq_engrams/csrc/binary_network.c"],
                           # Python's CFLAGS carry -fwrapv, which keeps GCC from folding the kernels' int32
                           # index arithmetic (a third slower); nothing in them relies on signed overflow.
                           extra_compile_args=["-O3", "-std=c99", "-fno-wrapv"], libraries=["m"])],
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        f"tensorflow=={TF_MINOR}.*",
        f"tf-keras=={TF_MINOR}.*",
        "larq>=0.14",
        "tensorflow-datasets>=4.9",
        # tfds 4.9.10 imports it at load time but does not declare it.
        "importlib_resources",
        "numpy<2",  # Larq's pin
        "absl-py",
        "tensorboard",  # tf.summary needs it; TensorFlow 2.21 no longer installs it
        "matplotlib",
        "psutil",
    ],
    extras_require={
        # pytest-xdist: the suite runs on up to 4 processes (pyproject.toml's addopts).
        "test": ["pytest>=7", "pytest-xdist>=3", "nbclient>=0.10", "nbformat>=5.9", "ipykernel"],
        "notebook": ["jupyter", "ipykernel", "nbclient>=0.10", "nbformat>=5.9"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
