"""Ansible's YAML inventory plugin, refusing YAML aliases, anchors, unknown tags and deep nesting first.

Ansible's own YAML inventory loader resolves aliases, so a "billion laughs" inventory (an anchor
referred to ten times, itself referring ten times to the next, ...) expands without bound as Ansible
walks it. This plugin reads the file's YAML events first (a linear pass that expands nothing) and
refuses, with one line naming the file, the line and the fix:

- an alias (``*name``) or an anchor (``&name``): write the value out in full;
- a tag other than YAML's standard ones and Ansible's ``!vault``/``!unsafe``;
- nesting deeper than ``MAX_DEPTH`` levels.

Everything else goes to the builtin ``yaml`` plugin unchanged. Self-contained on purpose: Ansible
loads it with its own Python, so it imports only Ansible and PyYAML (which Ansible requires).
Wired in by the repository's ``ansible.cfg`` (``inventory_plugins``, ``[inventory] enable_plugins``).
"""

from __future__ import annotations

import yaml
from ansible.errors import AnsibleParserError
from ansible.plugins.inventory.yaml import InventoryModule as YamlInventoryModule

DOCUMENTATION = r"""
    name: infadapter_yaml
    short_description: YAML inventory that refuses aliases, anchors, unknown tags and deep nesting
    description:
        - The builtin C(yaml) inventory plugin, after a pass over the file's YAML events that refuses
          aliases and anchors (the "billion laughs" bomb expands them without bound), tags other than
          YAML's standard ones and Ansible's C(!vault) and C(!unsafe), and nesting deeper than 64 levels.
        - The refusal is one line naming the file, the line and the fix.
    options:
      yaml_extensions:
        description: list of 'valid' extensions for files containing YAML
        type: list
        elements: string
        default: ['.yaml', '.yml', '.json']
        env:
          - name: ANSIBLE_YAML_FILENAME_EXT
          - name: ANSIBLE_INVENTORY_PLUGIN_EXTS
        ini:
          - key: yaml_valid_extensions
            section: defaults
          - section: inventory_plugin_yaml
            key: yaml_valid_extensions
"""

EXAMPLES = r"""
# ansible.cfg
# [defaults]
# inventory_plugins = plugins/inventory
# [inventory]
# enable_plugins = host_list, infadapter_yaml
"""

MAX_DEPTH = 64
_ALLOWED_TAGS = frozenset(
    {"!", "!vault", "!vault-encrypted", "!unsafe"}
    | {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "binary", "timestamp")}
)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def refusal(path: str) -> str | None:
    """The one-line reason to refuse the YAML file at ``path``, or None when it may be parsed."""
    depth = 0
    try:
        with open(path, "rb") as fh:
            for event in yaml.parse(fh, Loader=_Loader):
                line = event.start_mark.line + 1 if event.start_mark is not None else 0
                if isinstance(event, yaml.AliasEvent):
                    return (
                        f"{path}: line {line}: YAML aliases (*{event.anchor}) are not allowed in an inventory "
                        "(they can expand without bound); write the value out in full"
                    )
                anchor = getattr(event, "anchor", None)
                if anchor is not None:
                    return (
                        f"{path}: line {line}: YAML anchors and aliases (&{anchor}) are not allowed in an "
                        "inventory (aliases can expand without bound); write the value out in full, or put "
                        "shared values in group_vars"
                    )
                tag = getattr(event, "tag", None)
                if tag is not None and tag not in _ALLOWED_TAGS:
                    return (
                        f"{path}: line {line}: YAML tag {tag[:60]} is not allowed in an inventory; "
                        "remove it (only !vault and !unsafe are)"
                    )
                if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                    depth += 1
                    if depth > MAX_DEPTH:
                        return (
                            f"{path}: line {line}: nested deeper than {MAX_DEPTH} levels; "
                            "an inventory needs a handful, flatten it"
                        )
                elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                    depth -= 1
    except yaml.YAMLError:
        return None  # not valid YAML: the builtin plugin reports the syntax error as it always does
    return None


class InventoryModule(YamlInventoryModule):
    NAME = "infadapter_yaml"

    def parse(self, inventory, loader, path, cache=True):
        reason = refusal(path)
        if reason is not None:
            raise AnsibleParserError(reason)
        super().parse(inventory, loader, path, cache=cache)
