"""The English and the Chinese README name the same commands, and each links to the other near its top."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READMES = {"README.md": "README.zh-CN.md", "README.zh-CN.md": "README.md"}  # each README -> the one it links to
PREFIXES = ("make ", "python ", "pip ", ".venv/bin/python ", "tensorboard ")
TOP_LINES = 5  # "near its top": the link is among the first lines


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


def test_commands_are_extracted_as_written():
    text = "x\n```bash\nmake train   # set-up, then train\npython  a.py --b 1\n# python not.py\necho no\n```\nmake no\n"
    assert commands(text) == {"make train", "python a.py --b 1"}


def test_readmes_name_the_same_commands():
    en, zh = ((ROOT / name).read_text(encoding="utf-8") for name in READMES)
    only_en, only_zh = sorted(commands(en) - commands(zh)), sorted(commands(zh) - commands(en))
    assert not only_en and not only_zh, (
        "README.md and README.zh-CN.md name different commands in their code blocks; add each missing command to "
        "the other README (or drop it from both).\n"
        + "".join(f"  only in README.md:       {c}\n" for c in only_en)
        + "".join(f"  only in README.zh-CN.md: {c}\n" for c in only_zh))
    assert {"make train", "make test"} <= commands(en)


def test_each_readme_links_to_the_other_near_its_top():
    for name, other in READMES.items():
        top = "\n".join((ROOT / name).read_text(encoding="utf-8").splitlines()[:TOP_LINES])
        assert re.search(rf"\]\(\.?/?{re.escape(other)}\)", top), f"{name} should link to {other} in its first " \
                                                                   f"{TOP_LINES} lines, e.g. [简体中文]({other})"
