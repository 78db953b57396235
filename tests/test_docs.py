"""The project's documentation lives in the repository: every relative link in README.md and
docs/*.md resolves to a file inside the checkout, and nothing points at folders outside it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_docs_exist():
    assert (ROOT / "docs" / "architecture.md").is_file()


def test_relative_links_resolve_inside_the_repository():
    bad = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if (ROOT not in path.parents and path != ROOT) or not path.exists():
                bad.append(f"{doc.name}: {target}")
    assert not bad, bad


def test_no_pointers_outside_the_checkout():
    for doc in DOCS:
        text = doc.read_text()
        for needle in ("../shared", "/work/shared", "DESIGN.md"):
            assert needle not in text, f"{doc.name} mentions {needle!r}"
