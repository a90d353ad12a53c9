"""The predicted classes, in output order (a light module: no torch import)."""

OUTPUT_CLASSES: tuple[str, ...] = ("BG", "LV", "LVM", "RVC", "WH")
"""Background, LV cavity, LV myocardium, RV cavity, whole heart (all foreground as one)."""
