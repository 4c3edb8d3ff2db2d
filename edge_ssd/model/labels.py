"""Class labels: the one place that reads, finds and resolves them, for every command.

:func:`resolve_labels` decides a model's class names, in this order, and never guesses:

1. an explicit labels file (``--labels``) or list;
2. the model's own metadata (the ONNX ``metadata_props`` key :data:`LABELS_KEY`, a JSON list);
3. the bundle's manifest (``labels``);
4. a file named after the model, beside it: ``<stem>-labels.txt``, then ``<stem>.txt``;
5. otherwise ``class1``, ``class2``, ... (``BACKGROUND`` at the background index) with a one-line warning.

No ``*labels*.txt`` glob: a folder holding several models' labels would name one model's classes with another's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

LABELS_KEY = "edge_ssd.labels"  # ONNX metadata_props key: a JSON list of class names
BACKGROUND = "BACKGROUND"
_BACKGROUND_NAMES = {"background", "__background__", "bg", "???"}


def is_background(name: str) -> bool:
    """Whether a class name means "no object" (pytorch-ssd's BACKGROUND, TF's ``???``/``background``)."""
    return str(name).strip().lower() in _BACKGROUND_NAMES


def read_labels(path: str | Path) -> list[str]:
    """A labels file: one name per line (blank lines ignored), or a ``.json`` list of names."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
        raise UserError(f"cannot read labels file {p} ({why}); pass a text file with one class name per line, "
                        "BACKGROUND first") from None
    if p.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            raise UserError(f"labels file {p} is not valid JSON; give a JSON list of names or a text file, one "
                            "name per line") from None
        if not isinstance(names, list):
            raise UserError(f"labels file {p}: expected a JSON list of class names")
        names = [str(v).strip() for v in names]
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise UserError(f"labels file {p} is empty; write one class name per line, BACKGROUND first")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"labels file {p} lists {', '.join(dup)} more than once; each class name must be unique")
    return names


def read_training_labels(path: str | Path) -> list[str]:
    """A pytorch-ssd training labels file, strictly: one class name per line, ``BACKGROUND`` first, no blank line
    between names (the line number is the class index, so a gap would shift every class after it)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"labels file {str(p)!r} not found; pass --labels with pytorch-ssd's labels .txt") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read labels file {str(p)!r} ({type(e).__name__}); pass a UTF-8 text file") from None
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UserError(f"labels file {str(p)!r} is empty; write one class name per line, BACKGROUND first")
    if "" in lines:
        raise UserError(
            f"labels file {str(p)!r} has an empty line {lines.index('') + 1}; remove it (one class name per line)"
        )
    if lines[0].lower() != "background":
        raise UserError(
            f"labels file {str(p)!r} starts with {lines[0]!r}, not BACKGROUND; pytorch-ssd models have the "
            "background class at index 0 - add BACKGROUND as the first line"
        )
    if len(lines) < 2:
        raise UserError(f"labels file {str(p)!r} has only BACKGROUND; add the class names, one per line")
    dup = sorted({n for n in lines if lines.count(n) > 1})
    if dup:
        raise UserError(f"labels file {str(p)!r} repeats {dup[0]!r}; class names must be unique")
    return lines


def labels_from_metadata(metadata: Mapping[str, str] | None, source: str | Path) -> list[str] | None:
    """The names stored under :data:`LABELS_KEY` in a model's metadata, or None when absent."""
    if not metadata or LABELS_KEY not in metadata:
        return None
    try:
        names = json.loads(metadata[LABELS_KEY])
    except (json.JSONDecodeError, TypeError):
        names = None
    if not isinstance(names, list) or not names:
        raise UserError(f"{source}: metadata {LABELS_KEY} is not a JSON list of class names; re-export the model "
                        "or pass --labels FILE")
    return [str(v) for v in names]


def labels_file_for(model_path: str | Path) -> Path | None:
    """A labels file named after the model, beside it: ``<stem>-labels.txt``, then ``<stem>.txt``."""
    p = Path(model_path)
    for name in (f"{p.stem}-labels.txt", f"{p.stem}.txt"):
        f = p.parent / name
        if f.is_file() and f != p:
            return f
    return None


def placeholder_labels(num_classes: int, background: int | None = 0) -> list[str]:
    """``class1``, ``class2``, ... with ``BACKGROUND`` at ``background``."""
    out, k = [], 1
    for i in range(num_classes):
        if i == background:
            out.append(BACKGROUND)
        else:
            out.append(f"class{k}")
            k += 1
    return out


@dataclass(frozen=True)
class Labels:
    """Resolved class names and where they came from (``file``, ``metadata``, ``manifest``, ``beside``,
    ``placeholder``)."""

    names: list[str]
    source: str
    path: str = ""


def fit_labels(names: Sequence[str], num_classes: int | None, source: str | Path,
               background: int | None = 0) -> list[str]:
    """``names`` checked against the model's class count; a list without its background entry gets one."""
    out = [str(n) for n in names]
    if num_classes is None or len(out) == num_classes:
        return out
    if background is not None and len(out) == num_classes - 1 and not any(is_background(n) for n in out):
        return out[:background] + [BACKGROUND] + out[background:]
    raise UserError(f"{source}: the model has {num_classes} classes but {len(out)} labels were given; pass the "
                    "labels file the model was trained with (one name per line, BACKGROUND first)")


def resolve_labels(model_path: str | Path, num_classes: int | None, *, explicit=None,
                   metadata: Mapping[str, str] | None = None, manifest: Sequence[str] | None = None,
                   background: int | None = 0, warn: bool = True) -> Labels:
    """The model's class names (see the module docstring for the order)."""
    src = str(model_path)
    if explicit is not None:
        if isinstance(explicit, (list, tuple)):
            return Labels(fit_labels(explicit, num_classes, src, background), "list")
        return Labels(fit_labels(read_labels(explicit), num_classes, explicit, background), "file", str(explicit))
    meta = labels_from_metadata(metadata, src)
    if meta is not None:
        return Labels(fit_labels(meta, num_classes, src, background), "metadata")
    if manifest:
        return Labels(fit_labels(manifest, num_classes, src, background), "manifest")
    f = labels_file_for(model_path)
    if f is not None:
        return Labels(fit_labels(read_labels(f), num_classes, f, background), "beside", str(f))
    if num_classes is None:
        raise UserError(f"{src}: no labels found; pass --labels FILE (one class name per line, BACKGROUND first)")
    names = placeholder_labels(num_classes, background)
    if warn:
        p = Path(model_path)
        log.warning("%s: no labels (no --labels, no %s metadata, no %s-labels.txt or %s.txt beside it): classes are "
                    "named class1..class%d; pass --labels FILE", src, LABELS_KEY, p.stem, p.stem,
                    num_classes - (background is not None))
    return Labels(names, "placeholder")
