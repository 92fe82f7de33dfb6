"""The documents: every relative link in README.md and docs/ resolves (file and heading), and
every table marked with its results JSON says what that JSON holds."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# <!-- results: benchmarks/results/FILE.json KEY col|col|... --> right above a table: the
# table's rows are KEY's entries in order (KEY "-": the file's top-level list), each column "-"
# (not a figure) or figures "field:format" joined by "/" (see render)
RESULTS = re.compile(r"<!-- results: (\S+) (\S+) (\S+) -->\n+((?:\|.*\|\n)+)")


def prose(text: str) -> str:
    """The text without its fenced code blocks (links there are code, not links)."""
    return re.sub(r"(?ms)^```.*?^```", "", text)


def slugs(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    seen: dict[str, int] = {}
    out = set()
    for title in re.findall(r"(?m)^#{1,6} (.+)$", prose(path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "python -m pytest -q -n auto" in text and "pip install -e '.[all]'" in text
    linked = {Path(t).name for t in re.findall(r"\]\(docs/([\w.-]+\.md)", text)}
    assert linked == {p.name for p in (ROOT / "docs").glob("*.md")}, "a document the README does not link"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document):
    broken = []
    for target in LINK.findall(prose(document.read_text())):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        resolved = (document.parent / file).resolve() if file else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in slugs(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert broken == []


# <!-- results-by-name: FILE LIST VALUE:FORMAT cols=COL|COL|... --> right above a table: LIST's
# entries are found by "name"; a column is "-" or names joined by ";" ("{v}": the row's first
# cell, without a trailing " *"), whose VALUEs the cell shows joined by " / "; "NAME@SPEC"
# shows SPEC (as render() takes it) instead of VALUE
BY_NAME = re.compile(r"<!-- results-by-name: (\S+) (\S+) (\S+) cols=(.*?) -->\n+((?:\|.*\|\n)+)")


def render(entry: dict, spec: str) -> str:
    """One figure of `entry`: "a.b:FORMAT" (a dotted path; FORMAT a format spec, or %0 / %1 for
    a fraction as a percentage, MB for bytes in megabytes); "-" for a null field, or a field
    of one (the probe's rows of the train study have no mode)."""
    field, _, fmt = spec.partition(":")
    value = entry
    for part in field.split("."):
        value = None if value is None else value[part]
    if value is None:
        return "-"
    if fmt in ("%0", "%1"):
        return f"{100 * value:.{fmt[1]}f} %"
    if fmt == "MB":
        return f"{value / 1e6:.1f}"
    return format(value, fmt)


def marked_tables() -> list[tuple[Path, re.Match]]:
    return [(doc, m) for doc in DOCUMENTS for pattern in (RESULTS, BY_NAME) for m in pattern.finditer(doc.read_text())]


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip().strip("*").strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines()[2:]]


def test_some_tables_are_checked_against_their_results():
    assert len(marked_tables()) >= 4


@pytest.mark.parametrize("document,table", marked_tables(),
                         ids=lambda x: x.group(1) if isinstance(x, re.Match) else x.name)
def test_table_matches_its_results_json(document, table):
    if table.re is BY_NAME:
        return check_by_name(table)
    source, key, columns = table.group(1), table.group(2), table.group(3).split("|")
    data = json.loads((ROOT / source).read_text())
    entries = data if key == "-" else data[key]
    rows = table_rows(table.group(4))
    assert len(rows) == len(entries), f"{source} has {len(entries)} {key}, the table {len(rows)} rows"
    for row, entry in zip(rows, entries):
        assert len(row) == len(columns), row
        for cell, column in zip(row, columns):
            if column == "-":
                continue
            shown = " / ".join(render(entry, spec) for spec in column.split("/"))
            assert cell == shown, f"{source} {key} {column}: {shown!r} is not {cell!r}"


def check_by_name(table: re.Match) -> None:
    source, key, value, columns = table.group(1), table.group(2), table.group(3), table.group(4).split("|")
    entries = {e["name"]: e for e in json.loads((ROOT / source).read_text())[key]}
    for row in table_rows(table.group(5)):
        assert len(row) == len(columns), row
        variant = row[0].removesuffix(" *")
        for cell, column in zip(row, columns):
            if column == "-":
                continue
            figures = []
            for name in column.split(";"):
                name, _, spec = name.partition("@")
                figures.append(render(entries[name.replace("{v}", variant)], spec or value))
            assert cell == " / ".join(figures), f"{source}: {column} for {variant} is {' / '.join(figures)}, not {cell!r}"


def documented_commands() -> dict[str, set[tuple[str, str]]]:
    """{program: {(--flag, document)}} of every effnet-* command the documents show, in bash
    blocks and in inline code."""
    used: dict[str, set] = {}
    for document in DOCUMENTS:
        text = document.read_text()
        lines = [line.split("  #")[0] for block in re.findall(r"(?ms)^```bash\n(.*?)^```", text)
                 for line in block.splitlines()]
        lines += re.findall(r"`(effnet-[a-z-]+ [^`]*)`", prose(text))
        for line in lines:
            for part in re.split(r"&&|;|\|", line):
                words = part.split()
                if words and re.fullmatch(r"effnet-[a-z-]+", words[0]):
                    flags = {(w.split("=")[0], document.name) for w in words[1:] if re.fullmatch(r"--[a-z][\w-]*(=.*)?", w)}
                    used.setdefault(words[0], set()).update(flags)
    return used


def test_every_documented_flag_exists():
    """Each --flag the documents give an effnet-* command is one its --help lists (a renamed or
    removed flag fails here, not in a user's terminal)."""
    import shutil
    import subprocess
    used = documented_commands()
    assert {"effnet-infer", "effnet-export", "effnet-serve", "effnet-train", "effnet-label", "effnet-bench"} <= set(used)
    stale = []
    for program, flags in sorted(used.items()):
        assert shutil.which(program), f"{program} is documented but not installed"
        shown = subprocess.run([program, "--help"], capture_output=True, text=True, timeout=120)
        known = set(re.findall(r"--[\w-]+", shown.stdout))
        stale += [f"{document}: {program} {flag}" for flag, document in sorted(flags) if flag not in known]
    assert stale == []
