"""What every part of the MRML side shares about a node: its error, its attributes, its name.

The attributes the package writes on a node (patient, phase, method, role, ...) all sit under
one prefix, so they are found again after a scene is saved and reloaded and never collide with
another module's.
"""
from __future__ import annotations

from typing import Optional


class SlicerBridgeError(ValueError):
    """Input the bridge cannot use; the message names the node and what to do about it."""


#: Node attributes the bridge writes (and reads back), all under one prefix.
ATTRIBUTE_PREFIX = "CardiacEnsemble."
#: What the writers' "refusing to overwrite" error tells a scripter to do (`core.errors`).
OVERWRITE_HINT = "pass overwrite=True to replace it"


def set_attribute(node, key: str, value) -> None:
    node.SetAttribute(ATTRIBUTE_PREFIX + key, "" if value is None else str(value))


def get_attribute(node, key: str) -> Optional[str]:
    """A bridge attribute of a node (None when absent or empty)."""
    value = node.GetAttribute(ATTRIBUTE_PREFIX + key)
    return value or None


def describe(node) -> str:
    """How a message names a node: its name and its class."""
    return f"'{node.GetName()}' ({node.GetClassName()})"
