"""Build the Cython extensions of simplew._fast against the installed picows."""

import os

import picows
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class ParallelBuildExt(build_ext):
    """Compile the extensions on every core, unless ``-j N`` says otherwise."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


PICOWS_INCLUDE = os.path.dirname(os.path.dirname(picows.__file__))
# context: what the facade hands the lower layers (connection, router, http cimport it)
MODULES = ["context", "frames", "deflate", "gate", "connection", "router", "hub", "http"]

# who gets in (connection limits, origins) and the dead-peer pings; http cimports admission
MODULES += ["admission", "heartbeat"]

# the common request read in one pass ahead of httptools, and the Request made of it;
# http cimports both
MODULES += ["head", "request"]

# every stream's position and recent history (simplew.v2: a stream per room)
MODULES += ["streams"]

# which answers msgspec encodes as the standard library would (simplew.rest)
MODULES += ["plainjson"]

# the client's address behind a proxy: the PROXY protocol, forwarded headers; http cimports it
MODULES += ["proxy"]

# Server-Sent Events on the streams (hub cimports it)
MODULES += ["sse"]

# the C compiler's optimization: SIMPLEW_OPTIMIZE=-O0 builds about three times faster
# (a debug build, or a packaging test that does not measure speed)
OPTIMIZE = os.environ.get("SIMPLEW_OPTIMIZE", "-O2")

extensions = [
    Extension(
        f"simplew._fast.{name}",
        [f"simplew/_fast/{name}.pyx"],
        extra_compile_args=[OPTIMIZE],
    )
    for name in MODULES
]

setup(
    cmdclass={"build_ext": ParallelBuildExt},
    ext_modules=cythonize(
        extensions,
        include_path=[PICOWS_INCLUDE],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    ),
)
