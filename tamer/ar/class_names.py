"""Class names of a class-conditional model: shown in grids, accepted where a class is asked for, compared between
the folders a model is trained and evaluated on (a held-out folder missing a class would shift every label)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from tamer.ar.conditioning import ConditioningConfig


def class_labels(conditioning: ConditioningConfig) -> list[str]:
    """One name per label: the stored name, or the label's number where there is none."""
    names = list(conditioning.class_names or ())
    return [names[k] if k < len(names) else str(k) for k in range(conditioning.num_classes)]


def resolve_classes(conditioning: ConditioningConfig, specs: Sequence[str | int], flag: str = "--class") -> list[int]:
    """Class names or label numbers -> labels; a name the model does not know is an error with the nearest one."""
    names = list(conditioning.class_names or ())
    labels = []
    for spec in specs:
        text = str(spec).strip()
        if text in names:
            labels.append(names.index(text))
        elif text.lstrip("-").isdigit():
            label = int(text)
            if not 0 <= label < conditioning.num_classes:
                raise ValueError(f"{flag} {text}: class label {label} is outside 0..{conditioning.num_classes - 1}")
            labels.append(label)
        else:
            close = difflib.get_close_matches(text, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = f"its classes: {', '.join(names)}" if names else "it stores no class names; give label numbers"
            raise ValueError(f"{flag} {text}: not a class of this model{hint}; {known}")
    return labels


def class_set_difference(expected: Sequence[str], found: Sequence[str], where: str, than: str) -> str | None:
    """``None`` when ``found`` lists the same classes as ``expected``, in order; else one line naming the missing
    and extra classes (labels are the sorted folder names, so one missing class shifts all after it)."""
    expected, found = list(expected), list(found)
    if expected == found:
        return None
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"extra {', '.join(extra)}"] if extra else [])
    detail = "; ".join(parts) or f"another order: {', '.join(found)}"
    return f"{where}: its classes differ from {than} ({detail}); the labels would mean other classes"
