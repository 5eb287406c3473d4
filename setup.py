"""Build the native core (hashsieve._core), the resize (hashsieve._resample) and PDQ
(hashsieve._pdq) from ext/.

Set HASHSIEVE_DEBUG=1 to build with bounds checks, assertions and
AddressSanitizer for debugging.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("HASHSIEVE_DEBUG") == "1"

compile_args = ["-O3", "-std=c11", "-Wall", "-Wno-unused-function", "-pthread"]
link_args = ["-pthread"]
if debug:
    compile_args = ["-O1", "-g", "-std=c11", "-fsanitize=address", "-fno-omit-frame-pointer", "-pthread"]
    link_args = ["-fsanitize=address", "-pthread"]

directives = {
    "language_level": "3",
    "boundscheck": debug,
    "wraparound": debug,
    "cdivision": not debug,
    "initializedcheck": debug,
}

core = Extension(
    "hashsieve._core",
    sources=["ext/_core.pyx", "ext/mih.c"],
    # Headers too, so editing a kernel rebuilds the extension.
    depends=["ext/mih.h", "ext/mih_kernels.h", "ext/mih.pxd"],
    include_dirs=["ext", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")] + ([] if debug else [("NDEBUG", "1")]),
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

# Pillow-exact LANCZOS resize for the hashes.  -ffp-contract=off: the filter
# coefficients must round exactly as Pillow's (no fused multiply-adds).  Its
# generated C goes to build/ instead of ext/.
resample = Extension(
    "hashsieve._resample",
    sources=["ext/_resample.pyx", "ext/resample.c"],
    depends=["ext/resample.h"],
    include_dirs=["ext", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")] + ([] if debug else [("NDEBUG", "1")]),
    extra_compile_args=compile_args + ["-ffp-contract=off"],
    extra_link_args=link_args,
)

# PDQ, bit-identical to Meta's reference.  -ffp-contract=off: the reference is
# built for baseline x86-64 (no FMA instructions), so every multiply and add
# rounds on its own; fused multiply-adds would change the float results.
pdq = Extension(
    "hashsieve._pdq",
    sources=["ext/_pdq.pyx", "ext/pdq.c"],
    depends=["ext/pdq.h"],
    include_dirs=["ext", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")] + ([] if debug else [("NDEBUG", "1")]),
    extra_compile_args=compile_args + ["-ffp-contract=off"],
    extra_link_args=link_args,
)

setup(ext_modules=cythonize([core], compiler_directives=directives)
      + cythonize([resample, pdq], compiler_directives=directives, build_dir="build/cython"))
