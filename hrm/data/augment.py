"""Grid symmetries shared by the builders and by ARC voting.

The ids follow the reference's numbering so that augmented puzzle names (`..._t3_...`) mean the same
transform in our datasets and in the reference's: 0 identity, 1 rot90, 2 rot180, 3 rot270, 4 flip
left-right, 5 flip up-down, 6 transpose, 7 anti-transpose (flip-lr of rot90).
"""

from __future__ import annotations

import re

import numpy as np

NUM_DIHEDRAL = 8
# DIHEDRAL_INVERSE[t] undoes transform t (rotations by 90 and 270 swap; the rest are involutions).
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)

_AUG_NAME = re.compile(r"^(?P<task>.+)_t(?P<t>[0-7])_(?P<colours>[0-9]{10})$")


def dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    """Transform the last two axes of `grid` (so a stack [n, h, w] is transformed per item)."""
    axes = (-2, -1)
    if t == 0:
        return grid
    if t == 1:
        return np.rot90(grid, 1, axes=axes)
    if t == 2:
        return np.rot90(grid, 2, axes=axes)
    if t == 3:
        return np.rot90(grid, 3, axes=axes)
    if t == 4:
        return np.flip(grid, -1)
    if t == 5:
        return np.flip(grid, -2)
    if t == 6:
        return np.swapaxes(grid, -2, -1)
    if t == 7:
        return np.flip(np.rot90(grid, 1, axes=axes), -1)
    raise ValueError(f"dihedral id must be 0..7, got {t}")


def inverse_dihedral(grid: np.ndarray, t: int) -> np.ndarray:
    return dihedral(grid, DIHEDRAL_INVERSE[t])


def transformed_shape(shape: tuple[int, int], t: int) -> tuple[int, int]:
    """Shape of a (h, w) grid after transform t: odd rotations and (anti-)transposes swap the sides."""
    h, w = shape
    return (w, h) if t in (1, 3, 6, 7) else (h, w)


def colour_map_name(mapping: np.ndarray) -> str:
    return "".join(str(int(c)) for c in mapping)


def augmented_name(task: str, t: int, mapping: np.ndarray) -> str:
    """The reference's variant name `{task}_t{t}_{10-digit colour map}`."""
    return f"{task}_t{t}_{colour_map_name(mapping)}"


def parse_augmented_name(name: str) -> tuple[str, int, np.ndarray]:
    """Invert `augmented_name`; an unaugmented name gives (name, 0, identity map)."""
    m = _AUG_NAME.match(name)
    if m is None:
        return name, 0, np.arange(10, dtype=np.uint8)
    mapping = np.frombuffer(m["colours"].encode(), dtype=np.uint8) - ord("0")
    return m["task"], int(m["t"]), mapping


def invert_augmentation(grid: np.ndarray, t: int, mapping: np.ndarray) -> np.ndarray:
    """Undo 'colour map, then dihedral t' on a colour grid (values 0..9)."""
    inverse_colours = np.argsort(mapping).astype(np.uint8)
    return inverse_colours[inverse_dihedral(grid, t)]
