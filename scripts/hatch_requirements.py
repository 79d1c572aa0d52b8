"""Hatch metadata hook: the package's dependencies are requirements.txt's ``# Runtime`` section.

requirements.txt stays the one list people edit (and what requirements.lock is compiled from); its other
sections (Ansible, tests and lint) are not needed by the installed command and stay out of the wheel.
"""

from __future__ import annotations

from pathlib import Path

from hatchling.metadata.plugin.interface import MetadataHookInterface

SECTION = "# Runtime"


def runtime_requirements(text: str) -> list[str]:
    """The requirement lines between ``# Runtime`` and the next ``#`` heading, comments dropped."""
    out: list[str] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            if inside:
                break
            inside = line == SECTION or line.startswith(SECTION + " ")
            continue
        if inside and line:
            out.append(line.split(" #", 1)[0].strip())
    if not out:
        raise ValueError(f"requirements.txt: no requirements under a '{SECTION}' heading")
    return out


class CustomMetadataHook(MetadataHookInterface):
    def update(self, metadata: dict) -> None:
        metadata["dependencies"] = runtime_requirements(Path(self.root, "requirements.txt").read_text())
