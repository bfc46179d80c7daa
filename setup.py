"""Build fastpipe's native core (fastpipe._core, C++).

FASTPIPE_DEBUG=1 turns on Cython bounds checks and writes the `cython -a`
annotation (fastpipe/_core.html); FASTPIPE_SANITIZE=address|thread builds
the core with that sanitizer.

Extras are declared in pyproject.toml ([project.optional-dependencies]):
``pip install fastpipe[parquet]`` adds pyarrow for fastpipe.parquet.
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTPIPE_DEBUG", "") not in ("", "0")
sanitize = os.environ.get("FASTPIPE_SANITIZE", "")

compile_args = ["-std=c++17", "-O3" if not debug else "-O1", "-g0" if not debug else "-g",
                "-Wno-unused-function", "-Wno-unused-variable"]
link_args = ["-pthread"]
if sanitize:
    compile_args += ["-fsanitize=%s" % sanitize, "-fno-omit-frame-pointer", "-g"]
    link_args += ["-fsanitize=%s" % sanitize]

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": debug,
    "wraparound": debug,
    "cdivision": True,
    "initializedcheck": debug,
}

ext = Extension(
    "fastpipe._core",
    ["fastpipe/_core.pyx"],
    language="c++",
    include_dirs=[numpy.get_include(), "fastpipe/includes"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    ext_modules=cythonize([ext], compiler_directives=directives, annotate=debug,
                          include_path=["."]),
)
