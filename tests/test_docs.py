"""docs/design.md is the design reference the code cites: every `docs/design.md §N` in the code, the CLI's
help and the docs points at a section that exists, and nothing cites a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("kebr_core", "kebr_cli", "tests", "bench", "docs") for p in (ROOT / folder).rglob("*")
           if p.suffix in (".py", ".md", ".sh")] + [ROOT / "README.md"]


def test_every_design_reference_names_an_existing_section() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", design, flags=re.MULTILINE))
    assert {"4", "5", "5.5", "7", "9", "10"} <= sections
    cited = {}
    for path in SOURCES:
        for number in re.findall(r"docs/design\.md §(\d+(?:\.\d+)?)", path.read_text(encoding="utf-8")):
            cited.setdefault(number, path.relative_to(ROOT))
    assert cited, "no file cites docs/design.md"
    missing = {n: str(p) for n, p in cited.items() if n not in sections}
    assert not missing, f"cited sections missing from docs/design.md: {missing}"


def test_no_reference_to_a_design_file_outside_the_repository() -> None:
    stale = [str(p.relative_to(ROOT)) for p in SOURCES if re.search(r"\bDESIGN(\.md)? §", p.read_text(encoding="utf-8"))]
    assert not stale, stale
