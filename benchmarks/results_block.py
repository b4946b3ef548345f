"""The part of a results page that a benchmark script owns: the text between its two markers."""

from __future__ import annotations

from pathlib import Path


def write_block(path: Path, begin: str, end: str, body: str) -> None:
    """Put ``body`` between the markers ``begin`` and ``end`` in ``path``: in place of what was
    there, or appended (the page is made if missing); the rest of the page is left as it is."""
    text = path.read_text() if path.is_file() else "# Results\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
