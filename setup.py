"""The C hypercall traps (arm64, x86) and instruction budget; optional, so pvkit still installs without gcc
(with its ctypes trap; only --deterministic needs the budget)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pvkit.backends._trap",
            ["src/pvkit/backends/_trap.c"],
            depends=["src/pvkit/backends/_direct.h", "src/pvkit/backends/_pointers.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "pvkit.backends.arm64._sysreg",
            ["src/pvkit/backends/arm64/_sysreg.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "pvkit.backends._uart",
            ["src/pvkit/backends/_uart.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "pvkit.backends.x86._x86trap",
            ["src/pvkit/backends/x86/_x86trap.c"],
            depends=["src/pvkit/backends/_direct.h", "src/pvkit/backends/_pointers.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "pvkit.backends._budget",
            ["src/pvkit/backends/_budget.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
    ]
)
