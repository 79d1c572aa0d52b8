#!/usr/bin/env python3
"""Assemble README.md from docs/*.md in a fixed order (edit the docs, then run this)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["intro", "usage", "core", "simulator", "serving", "dispatcher", "adapt", "kubernetes", "ansible",
         "development"]


def main() -> None:
    docs = ROOT / "docs"
    parts = []
    for name in ORDER:
        p = docs / f"{name}.md"
        if p.exists():
            parts.append(p.read_text().strip() + "\n")
    extra = sorted(p for p in docs.glob("*.md") if p.stem not in ORDER)
    parts.extend(p.read_text().strip() + "\n" for p in extra)
    (ROOT / "README.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
