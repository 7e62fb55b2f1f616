"""Every document a comment or string in ``iot_flows`` cites is a file in this repository.

Rules, over every comment and string literal (docstrings included) of ``iot_flows/**.py``:

- a path ``docs/<name>.<ext>`` names an existing file;
- every ``§N`` belongs to a citation: it follows ``docs/<name>.md`` (then ``N`` must be a
  numbered heading of that file, e.g. ``## 3.`` or ``### 3.5``) or ``MQTT 3.1.1`` (the
  public OASIS standard), possibly after other ``§`` references joined by ``,``, ``and``
  or ``#n`` (``docs/iothub-reference.md §3.5-3.6, §8 #9``);
- the project's outside notes are never cited by name (their facts live in ``docs/``).
"""

from __future__ import annotations

import io
import re
import tokenize
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "iot_flows"

_PATH = re.compile(r"\bdocs/[\w./-]*\w")
_PIECE = re.compile(r"(docs/[\w-]+\.md|MQTT 3\.1\.1)|§\s?(\d+(?:\.\d+)*)(?:-(\d+(?:\.\d+)*))?")
_GLUE = re.compile(r"^(?:\s|,|;|\band\b|\bor\b|#\d+(?:-\d+)?)*$")
_OUTSIDE = re.compile(r"(?<!docs/)\b(sdk-wire-facts|iothub-reference|rollout-anchors|prefect-and-mqtt-notes|design\.md|style\.md)\b")


@cache
def _sections(doc: str) -> frozenset[str]:
    text = (REPO / doc).read_text()
    return frozenset(m.group(1) for m in re.finditer(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", text, re.M))


def _texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and string literal, whitespace runs folded to one space."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            found.append((tok.start[0], re.sub(r"\s*\n\s*#?\s*", " ", tok.string)))
    return found


def _problems(text: str) -> list[str]:
    problems = [f"{m.group(0)} does not exist" for m in _PATH.finditer(text) if not (REPO / m.group(0)).exists()]
    problems += [f"cites the outside note {m.group(1)!r}" for m in _OUTSIDE.finditer(text)]
    anchor: str | None = None
    position = 0
    for m in _PIECE.finditer(text):
        if not _GLUE.match(text[position : m.start()]):
            anchor = None
        position = m.end()
        if m.group(1):
            anchor = m.group(1)
            continue
        if anchor is None:
            problems.append(f"{m.group(0)!r} without a document (docs/<file>.md §N or MQTT 3.1.1 §N)")
        elif anchor.startswith("docs/") and (REPO / anchor).exists():
            for number in filter(None, (m.group(2), m.group(3))):
                if number not in _sections(anchor):
                    problems.append(f"{anchor} has no section {number}")
    return problems


def test_every_cited_document_and_section_is_in_the_repository() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, text in _texts(path):
            found += [f"{path.relative_to(REPO)}:{line}: {p}" for p in _problems(text)]
    assert not found, f"{len(found)} references to documents outside the repository:\n" + "\n".join(found)


def test_the_rules_catch_what_they_should() -> None:
    assert _problems("see docs/iothub-reference.md §3.5-3.6, §8 #9 and MQTT 3.1.1 §2.2.3") == []
    assert _problems("(docs/iothub-reference.md §6.3 \"Traffic shaping\")") == []
    assert _problems("reference §1.3") != []
    assert _problems("docs/iothub-reference.md §1.3 says so; later §2") != []
    assert _problems("docs/iothub-reference.md §99") != []
    assert _problems("docs/no-such-file.md") != []
    assert _problems('sdk-wire-facts "Jobs"') != []
