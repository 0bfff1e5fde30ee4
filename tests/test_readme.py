"""The README is a front page, and the documentation stands on its own.

The README stays short (details live in ``docs/``), names no commit of this repository (a page
must not depend on the history that made it), and neither it, the docs nor the package's sources
refer to files outside the repository. Every relative link in the README and the docs points to a
file that exists.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_README_LINES = 260
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SOURCE_FOLDERS = ("seg2tflite", "models", "calibration", "converters", "eval", "app")

# A commit hash as pages cite one: 7 to 40 hex digits with at least one digit and one letter,
# in backticks on its own or after a word that introduces a commit ("at def1360", "commit
# 3d796311b", "from a1e306c"). Hex that is data (a sha256 of 64 digits, 0x constants, a word like
# "deadbeef" without digits, a version number) does not look like that.
_HEX = r"(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}"
COMMIT = re.compile(
    rf"`{_HEX}`|\b(?:at|commit|commits|from|since|on|before|after|in|LiteRT|fixed in)\s+`?{_HEX}\b", re.IGNORECASE
)
OUTSIDE = re.compile(r"\.\./shared|ANCHORS\.md|\b\d{3}_[0-9a-f]{16}\b|\bseed \d{3}\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _files():
    yield from PAGES
    for folder in SOURCE_FOLDERS:
        if (ROOT / folder).is_dir():
            yield from sorted((ROOT / folder).rglob("*.py"))


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_page_names_no_commit(page):
    found = [m.group(0) for m in COMMIT.finditer(page.read_text())]
    assert not found, f"{page.relative_to(ROOT)} cites commits {found}: say what the code does now instead"


def test_the_commit_pattern_flags_hashes_and_spares_data():
    assert COMMIT.search("run exactly so at commit `def1360`")
    assert COMMIT.search("fixed in LiteRT 3d796311b, released in 2.1.3")
    assert COMMIT.search("its rows are that conversion (`73bf936` and `d7fcba6`)")
    for data in (
        "sha256 c8ccfb3665accd281b7d90c892b2a9a01d67dcacdfafb7035a44d069caee05d4",
        "ai-edge-litert 2.3.0, onnx2tf 1.29.24",
        "a 0x7fffffff constant",
        "the deadbeef marker",
        "2048-bin histogram at 1e-3 of the range",
    ):
        assert COMMIT.search(data) is None, data


def test_nothing_refers_to_files_outside_the_repository():
    found = []
    for path in _files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "refers to files outside the repository (cite the paper or public repository):\n" + "\n".join(found)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"
