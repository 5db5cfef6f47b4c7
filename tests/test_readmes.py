"""The READMEs and docs pages: the English and Chinese README mirror each other, and every relative link resolves.

Offline and fast: the pages are read as text, nothing is fetched or run.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
READMES = {"README.md": "README.zh-CN.md", "README.zh-CN.md": "README.md"}  # each README -> the one it links to
PREFIXES = ("make ", "python ", "pip ", ".venv/bin/python ", "tensorboard ", "source ")
TOP_LINES = 5  # "near its top": the link is among the first lines
README_MAX_BYTES = 10_000  # the English README stays a front door; the detail lives in docs/
PAGES = sorted(
    {ROOT / "README.md", ROOT / "README.zh-CN.md", ROOT / "notebooks" / "README.md", *(ROOT / "docs").glob("*.md")}
)

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")  # `code`, ``co`de``: links inside are not links
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")  # [t](x), ![a](x "t")
HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href|srcset)\s*=\s*\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown ``text`` outside fenced code blocks, with inline code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def commands(text: str) -> set[str]:
    """Every command line inside the fenced code blocks of a Markdown ``text`` that starts with one of ``PREFIXES``,
    without its trailing ``# comment``, with runs of spaces collapsed."""
    found, fenced = set(), False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        command = " ".join(re.sub(r"\s#.*$", "", line).split())
        if fenced and command.startswith(PREFIXES):
            found.add(command)
    return found


def links(text: str) -> list[str]:
    """Every link target in a Markdown ``text`` (Markdown links and images, HTML ``src``/``href``), outside code."""
    found = []
    for line in prose_lines(text):
        matches = sorted([*MD_LINK.finditer(line), *HTML_LINK.finditer(line)], key=lambda m: m.start())
        found += [m.group(1) for m in matches]
    return found


def images(text: str) -> list[str]:
    """The image files a Markdown ``text`` shows, in order."""
    return [t for t in links(text) if t.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".svg"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script, digits, ``_`` and ``-``
    kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, with GitHub's -1, -2, ... for repeated ones."""
    found, counts = set(), {}
    for line in prose_lines(page.read_text(encoding="utf-8")):
        if m := re.match(r"^#{1,6}\s+(.*?)[\s#]*$", line):
            base = slug(m.group(1))
            n = counts[base] = counts.get(base, -1) + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` whose file does not exist, or whose ``#anchor`` names no heading of a Markdown
    target; one line each."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        path, _, anchor = unquote(target).partition("#")
        file = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}: ({target})"
        if not file.exists():
            broken.append(f"{where}: no file {file.relative_to(root) if root in file.parents else file}")
        elif anchor and file.suffix == ".md" and anchor.lower() not in anchors(file):
            broken.append(f"{where}: no heading with anchor #{anchor} in {file.relative_to(root)}")
    return broken


# ---------------------------------------------------------------------------------------------- the helpers
def test_commands_are_extracted_as_written():
    text = "x\n```bash\nmake train   # set-up, then train\npython  a.py --b 1\n# python not.py\necho no\n```\nmake no\n"
    assert commands(text) == {"make train", "python a.py --b 1"}


def test_links_are_found_outside_code_only():
    text = (
        'See [a](a.md), ![pic](f/p.png "title") and <img src="f/q.png" width="600">, [web](https://x.y).\n'
        "Not `[code](c.md)`.\n```\n[fenced](d.md)\n```\n[b](b.md#some-part) [self](#top)\n"
    )
    assert links(text) == ["a.md", "f/p.png", "f/q.png", "https://x.y", "b.md#some-part", "#top"]
    assert images(text) == ["f/p.png", "f/q.png"]


def test_slugs_follow_github():
    assert slug("Without make (Windows, or anywhere)") == "without-make-windows-or-anywhere"
    assert slug("The `scripts/train.py` options") == "the-scriptstrainpy-options"
    assert slug("一次运行会产生什么") == "一次运行会产生什么"


def test_a_broken_link_is_reported(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-heading) [no file](gone.md) [no anchor](there.md#nowhere) [self](#x)\n# X\n", encoding="utf-8"
    )
    assert broken_links(page, tmp_path) == [
        "page.md: (gone.md): no file gone.md",
        "page.md: (there.md#nowhere): no heading with anchor #nowhere in there.md",
    ]


# ---------------------------------------------------------------------------------------------- the pages
def test_every_relative_link_resolves():
    broken = "".join(f"\n  {line}" for page in PAGES for line in broken_links(page))
    assert not broken, f"relative links that lead nowhere (fix the link, or the heading it names):{broken}"


def test_readmes_name_the_same_commands():
    en, zh = ((ROOT / name).read_text(encoding="utf-8") for name in READMES)
    only_en, only_zh = sorted(commands(en) - commands(zh)), sorted(commands(zh) - commands(en))
    assert not only_en and not only_zh, (
        "README.md and README.zh-CN.md name different commands in their code blocks; add each missing command to "
        "the other README (or drop it from both).\n"
        + "".join(f"  only in README.md:       {c}\n" for c in only_en)
        + "".join(f"  only in README.zh-CN.md: {c}\n" for c in only_zh)
    )
    assert {"make train", "make test"} <= commands(en)


def test_readmes_have_the_same_sections_and_pictures():
    en, zh = ((ROOT / name).read_text(encoding="utf-8") for name in READMES)
    sections = [[line for line in prose_lines(t) if line.startswith("## ")] for t in (en, zh)]
    assert len(sections[0]) == len(sections[1]), f"README.md has sections {sections[0]}, README.zh-CN.md {sections[1]}"
    assert images(en) == images(zh), f"README.md shows {images(en)}, README.zh-CN.md {images(zh)}"


def test_each_readme_links_to_the_other_near_its_top():
    for name, other in READMES.items():
        top = "\n".join((ROOT / name).read_text(encoding="utf-8").splitlines()[:TOP_LINES])
        assert re.search(rf"\]\(\.?/?{re.escape(other)}\)", top), (
            f"{name} should link to {other} in its first {TOP_LINES} lines, e.g. [简体中文]({other})"
        )


def test_readme_stays_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, more than {README_MAX_BYTES}: move detail into docs/"
