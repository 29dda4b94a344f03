"""ACDC's labels: one owner for the label values, names and structures of the whole package."""
from __future__ import annotations

#: ACDC labels; index = label value.
LABEL_NAMES: tuple[str, ...] = ("background", "RV cavity", "LV myocardium", "LV cavity")
#: Foreground structures with their label value, in report order.
STRUCTURES: dict[str, int] = {"RV": 1, "Myo": 2, "LV": 3}
NUM_CLASSES = len(LABEL_NAMES)
