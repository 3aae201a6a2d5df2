"""Build step for the one compiled part of gshead: the AVX2 compositing kernel of the ``cpu``
rasterizer (``gshead/plugins/rasterizers/_composite_avx2.c``), a plain shared library loaded with
ctypes. Optional: when no C compiler is available the install still succeeds and the rasterizer
uses its numba kernel. Everything else about the package is declared in pyproject.toml."""

import sys

from setuptools import Extension, setup

_flags = [] if sys.platform == "win32" else ["-O3", "-std=gnu11", "-pthread", "-fno-math-errno"]
setup(
    ext_modules=[
        Extension(
            "gshead.plugins.rasterizers._composite_avx2",
            sources=["gshead/plugins/rasterizers/_composite_avx2.c"],
            extra_compile_args=_flags,
            extra_link_args=[] if sys.platform == "win32" else ["-pthread"],
            optional=True,
        )
    ]
)
