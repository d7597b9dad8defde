"""The documentation: the README is a short front door whose CI command `.ci/run` can find,
every relative link of the README and of docs/ leads to a file (and heading) that exists, and
the mkdocs site, API reference included, builds with no warnings."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 250
MARKER = "<!-- ci-test-command -->"

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def markdown_files():
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(path: Path):
    """(target, anchor) of every link that is not a URL, outside code blocks and spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        yield file, anchor


def heading_anchors(path: Path) -> set:
    """The ids Python-Markdown's toc extension gives the headings of a markdown file."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors = set()
    for title in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE):
        title = re.sub(r"[`*_]", "", title)
        slug = re.sub(r"[^\w\s-]", "", title).strip().lower()
        anchors.add(re.sub(r"[-\s]+", "-", slug))
    return anchors


def test_readme_is_a_short_front_door_with_the_ci_command():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    # .ci/run takes the second line after the marker (the first opens the code block)
    at = lines.index(MARKER)
    assert lines[at + 1].startswith("```")
    assert "pytest" in lines[at + 2] and 'pip install -e ".[test]"' in lines[at + 2]


def test_every_relative_link_resolves():
    broken = []
    for path in markdown_files():
        for file, anchor in relative_links(path):
            target = (path.parent / file).resolve() if file else path
            if not target.exists():
                broken.append(f"{path.relative_to(ROOT)}: {file}")
            elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
                broken.append(f"{path.relative_to(ROOT)}: {file}#{anchor} (no such heading)")
    assert not broken, "broken links: " + "; ".join(broken)


def test_link_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](page.md#title) [gone](missing.md) [bad](#nope)\n"
                    "```\n[in code](nowhere.md)\n```\n[web](https://example.org)\n")
    assert list(relative_links(page)) == [("page.md", "title"), ("missing.md", ""), ("", "nope")]
    assert heading_anchors(page) == {"title"}


def test_site_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "laplace" / "index.html").read_text(encoding="utf-8")
    assert "fit_laplace" in api  # the API reference rendered the docstrings
