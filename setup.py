"""The C hypercall trap; optional, so pvkit still installs (with its ctypes trap) without gcc."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pvkit.backends._trap",
            ["src/pvkit/backends/_trap.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
