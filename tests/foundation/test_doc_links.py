"""Every link in README.md and docs/*.md resolves inside the repository, and
no document names a Markdown file the repository does not have (such as a
design note that lives elsewhere)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# A bare file name such as DESIGN.md or `docs/x.md` in prose.
MD_NAME = re.compile(r"(?<![\w/.-])([\w./-]*[\w-]+\.md)\b")
_SKIP_DIRS = {".venv", ".git", "target", "node_modules", ".speckit"}


def _repo_markdown() -> set[str]:
    names: set[str] = set()
    for p in ROOT.rglob("*.md"):
        if not _SKIP_DIRS.intersection(p.relative_to(ROOT).parts):
            names.add(p.name)
            names.add(p.relative_to(ROOT).as_posix())
    return names


def relative_links(text: str) -> list[str]:
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, mailto:, an anchor in the same page
        out.append(target.split("#", 1)[0])
    return out


def test_the_link_pattern_finds_links_and_skips_urls() -> None:
    text = 'see [a](docs/a.md#x), ![b](img/b.svg "t"), [c](https://x.org/y.md) and [d](#top)'
    assert relative_links(text) == ["docs/a.md", "img/b.svg"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc: Path) -> None:
    broken = [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert broken == [], f"{doc.relative_to(ROOT)}: links to missing files {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_markdown_files_exist(doc: Path) -> None:
    known = _repo_markdown()
    text = doc.read_text()
    # URLs may name any file on their own site.
    text = re.sub(r"https?://\S+", "", text)
    missing = sorted(
        {m for m in MD_NAME.findall(text) if m not in known and Path(m).name not in known}
    )
    assert missing == [], f"{doc.relative_to(ROOT)} names files not in the repository: {missing}"


def test_readme_commands_call_the_venv_cli() -> None:
    """The README's shell blocks run `speckit` as `.venv/bin/speckit` (it says
    that activating the environment allows the short form)."""
    text = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in text
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks
    bare = [
        line
        for block in blocks
        for line in block.splitlines()
        if re.search(r"(^|[;&|]\s*|\$\(\s*)speckit\s", line.split("#", 1)[0])
    ]
    assert bare == [], f"README commands without .venv/bin/: {bare}"


def _python_files() -> list[Path]:
    return sorted(
        p
        for folder in ("services", "clients", "bench", "tests", "scripts")
        for p in (ROOT / folder).rglob("*.py")
        if not _SKIP_DIRS.intersection(p.relative_to(ROOT).parts) and p != Path(__file__).resolve()
    )


def test_code_names_no_document_the_repository_lacks() -> None:
    # Docstrings and comments point at docs/ and at project notes such as
    # README.md: a reader must be able to open them. (A lower-case bare name
    # like "report.md" is a file a test writes, not a reference.)
    known = _repo_markdown()
    found = set()
    for p in _python_files():
        text = re.sub(r"https?://\S+", "", p.read_text(errors="replace"))
        if "../shared/" in text:
            found.add(f"{p.relative_to(ROOT)}: ../shared/")
        for m in MD_NAME.findall(text):
            referenced = m.startswith("docs/") or Path(m).stem.isupper()
            if referenced and m not in known and Path(m).name not in known:
                found.add(f"{p.relative_to(ROOT)}: {m}")
    assert sorted(found) == []
