#!/usr/bin/env python3
"""Assemble README.md from docs/*.md in a fixed order (edit the docs, then run this)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["intro", "usage", "core", "simulator", "serving", "dispatcher", "adapt", "kubernetes", "ansible",
         "development"]


def normalize(text: str, top: int) -> str:
    """Shift the headings of one doc so its highest becomes level ``top`` (code blocks untouched)."""
    lines = text.splitlines()
    fence = False
    levels = []
    for ln in lines:
        if ln.startswith("```"):
            fence = not fence
        elif not fence and ln.startswith("#"):
            levels.append(len(ln) - len(ln.lstrip("#")))
    if not levels:
        return text
    shift = top - min(levels)
    out, fence = [], False
    for ln in lines:
        if ln.startswith("```"):
            fence = not fence
        elif not fence and ln.startswith("#"):
            ln = "#" * shift + ln if shift > 0 else ln[-shift:]
        out.append(ln)
    return "\n".join(out)


def main() -> None:
    docs = ROOT / "docs"
    parts = []
    for name in ORDER:
        p = docs / f"{name}.md"
        if p.exists():
            parts.append(normalize(p.read_text().strip(), 1 if name == "intro" else 2) + "\n")
    extra = sorted(p for p in docs.glob("*.md") if p.stem not in ORDER)
    parts.extend(normalize(p.read_text().strip(), 2) + "\n" for p in extra)
    (ROOT / "README.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
