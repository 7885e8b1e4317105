"""What the repository cites and declares is there for its users.

Docs and source cited "hypercall-abi-facts", a file users do not have; they now cite the
public specifications (Arm DEN0022/DEN0028/DEN0057/DEN0098, the Linux KVM documentation).
pyproject.toml named a licence with no LICENSE file, in the table form setuptools deprecates.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .conftest import ROOT

SUFFIXES = {".py", ".md", ".rst", ".c", ".h", ".S", ".txt", ".toml", ".json"}


def test_nothing_cites_a_reference_file_that_is_not_in_the_repository() -> None:
    this = Path(__file__).resolve()
    files = [ROOT / name for name in ("README.md", "Makefile", "pyproject.toml")]
    for folder in ("src", "tests", "docs", "guests", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    citing = {
        str(p.relative_to(ROOT))
        for p in files
        if p != this and "hypercall-abi-facts" in p.read_text(errors="replace")
    }
    assert not citing, sorted(citing)


def test_the_declared_licence_is_an_spdx_expression_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # a string, not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
