"""`hrm-data show PATH --index i`: one puzzle of a built dataset, in the terminal or as a PNG.

The kind of dataset is read from dataset.json (Sudoku: seq 81 / vocab 11; Maze: 900 / 6; ARC:
900 / 12; logistics: any square grid / 14); anything else is shown as a plain grid of token ids.
Every example of the puzzle is shown as input -> label, with the puzzle's identifier mapped back to its name.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from hrm.data.format import IDENTIFIERS, DatasetError, load_split, read_metadata

# ARC's usual palette, colour 0..9.
ARC_COLOURS = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
MAZE_COLOURS = {0: "#000000", 1: "#333333", 2: "#FFFFFF", 3: "#2ECC40", 4: "#FF4136", 5: "#FFDC00"}


def dataset_kind(seq_len: int, vocab_size: int) -> str:
    from hrm.data.logistics import VOCAB_SIZE as LOGISTICS_VOCAB

    if vocab_size == LOGISTICS_VOCAB and math.isqrt(seq_len) ** 2 == seq_len:
        return "logistics"  # any square city (30x30 like Maze, smaller for demos)
    return {(81, 11): "sudoku", (900, 6): "maze", (900, 12): "arc"}.get((seq_len, vocab_size), "grid")


def load_puzzle(path: str | Path, index: int, split: str = "train", set_name: str = "all") -> dict:
    """The puzzle's examples and what names it: {kind, name, identifier, group, inputs, labels}."""
    path = Path(path)
    meta = read_metadata(path / split)
    arrays = load_split(path / split, set_name)
    n = len(arrays["puzzle_identifiers"])
    if not 0 <= index < n:
        raise DatasetError(f"--index {index} is out of range: {path / split} holds puzzles 0..{n - 1}")
    lo, hi = int(arrays["puzzle_indices"][index]), int(arrays["puzzle_indices"][index + 1])
    identifier = int(arrays["puzzle_identifiers"][index])
    names_path = path / IDENTIFIERS
    names = json.loads(names_path.read_text()) if names_path.is_file() else []
    name = names[identifier] if identifier < len(names) else f"#{identifier}"
    group = int(np.searchsorted(arrays["group_indices"], index, side="right")) - 1
    return {"kind": dataset_kind(meta.seq_len, meta.vocab_size), "split": split, "index": index,
            "identifier": identifier, "name": name, "group": group,
            "inputs": np.asarray(arrays["inputs"][lo:hi]), "labels": np.asarray(arrays["labels"][lo:hi])}


def arc_crop(tokens: np.ndarray) -> np.ndarray:
    """Colour grid (0..9) of an ARC row: the bounding box of colour tokens (works for translated rows)."""
    grid = tokens.reshape(30, 30)
    rows, cols = np.nonzero(grid >= 2)
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    return grid[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1] - 2


# ---------------------------------------------------------------------------------------------------
# Terminal


def _sudoku_text(tokens: np.ndarray, givens: np.ndarray | None):
    from rich.text import Text

    text = Text()
    digits = tokens.reshape(9, 9).astype(int) - 1
    for r in range(9):
        if r and r % 3 == 0:
            text.append("------+-------+------\n")
        for c in range(9):
            if c and c % 3 == 0:
                text.append("| ")
            d = digits[r, c]
            style = "bold" if givens is None or givens[r, c] else "cyan"
            text.append(("." if d <= 0 else str(d)) + " ", style=style)
        text.append("\n")
    return text


def _maze_text(tokens: np.ndarray):
    from rich.text import Text

    side = int(math.isqrt(len(tokens)))
    glyph = {0: ("?", ""), 1: ("█", "grey50"), 2: (" ", ""), 3: ("S", "bold green"), 4: ("G", "bold red"),
             5: ("o", "bold yellow")}
    text = Text()
    for row in tokens.reshape(side, side):
        for t in row:
            ch, style = glyph.get(int(t), ("?", "magenta"))
            text.append(ch, style=style)
        text.append("\n")
    return text


def _arc_text(grid: np.ndarray):
    from rich.text import Text

    text = Text()
    for row in grid:
        for c in row:
            # The digit keeps the grid readable where colours are off (pipes, logs).
            fg = "white" if int(c) in (0, 1, 9) else "black"
            text.append(f"{int(c)} ", style=f"{fg} on {ARC_COLOURS[int(c)]}")
        text.append("\n")
    return text


def _grid_text(tokens: np.ndarray):
    from rich.text import Text

    side = int(math.isqrt(len(tokens)))
    if side * side != len(tokens):
        return Text(" ".join(map(str, tokens.tolist())))
    width = len(str(int(tokens.max()))) if len(tokens) else 1
    return Text("\n".join(" ".join(f"{int(t):>{width}}" for t in row) for row in tokens.reshape(side, side)))


def render_example(kind: str, inputs: np.ndarray, labels: np.ndarray) -> tuple:
    """Rich renderables for (input, label) of one example."""
    if kind == "sudoku":
        givens = inputs.reshape(9, 9) > 1
        return _sudoku_text(inputs, None), _sudoku_text(labels, givens)
    if kind == "maze":
        return _maze_text(inputs), _maze_text(labels)
    if kind == "arc":
        return _arc_text(arc_crop(inputs)), _arc_text(arc_crop(labels))
    if kind == "logistics":
        from hrm.data.logistics import map_text

        return map_text(inputs), map_text(labels)
    return _grid_text(inputs), _grid_text(labels)


def print_puzzle(puzzle: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{puzzle['split']} puzzle {puzzle['index']}[/]: {puzzle['name']} "
                  f"(identifier {puzzle['identifier']}, group {puzzle['group']}, "
                  f"{len(puzzle['inputs'])} examples)", highlight=False)
    for e, (inp, lab) in enumerate(zip(puzzle["inputs"], puzzle["labels"])):
        table = Table(show_header=True, box=None, padding=(0, 2))
        table.add_column(f"example {e}: input")
        table.add_column("label")
        table.add_row(*render_example(puzzle["kind"], inp, lab))
        console.print(table)


# ---------------------------------------------------------------------------------------------------
# PNG


def save_png(puzzle: dict, out: str | Path) -> Path:
    """One row per example, input left and label right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    n = max(1, len(puzzle["inputs"]))
    fig, axes = plt.subplots(n, 2, figsize=(6, 3 * n), squeeze=False)
    for e, (inp, lab) in enumerate(zip(puzzle["inputs"], puzzle["labels"])):
        for ax, tokens, title in ((axes[e, 0], inp, "input"), (axes[e, 1], lab, "label")):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"example {e}: {title}", fontsize=8)
            if puzzle["kind"] == "arc":
                ax.imshow(arc_crop(tokens), cmap=ListedColormap(ARC_COLOURS), vmin=0, vmax=9)
            elif puzzle["kind"] == "maze":
                side = int(math.isqrt(len(tokens)))
                colours = [MAZE_COLOURS[k] for k in range(6)]
                ax.imshow(tokens.reshape(side, side), cmap=ListedColormap(colours), vmin=0, vmax=5)
            elif puzzle["kind"] == "logistics":
                from hrm.data.logistics import TOKEN_COLOURS

                side = int(math.isqrt(len(tokens)))
                ax.imshow(tokens.reshape(side, side), cmap=ListedColormap(TOKEN_COLOURS), vmin=0,
                          vmax=len(TOKEN_COLOURS) - 1)
            elif puzzle["kind"] == "sudoku":
                ax.imshow(np.ones((9, 9)), cmap="gray", vmin=0, vmax=1)
                for r in range(9):
                    for c in range(9):
                        d = int(tokens[r * 9 + c]) - 1
                        if d > 0:
                            given = inp[r * 9 + c] > 1
                            ax.text(c, r, str(d), ha="center", va="center", fontsize=9,
                                    color="black" if given else "tab:blue")
                for k in range(0, 10, 3):
                    ax.axhline(k - 0.5, color="black", lw=1.5)
                    ax.axvline(k - 0.5, color="black", lw=1.5)
            else:
                side = int(math.isqrt(len(tokens)))
                grid = tokens.reshape(side, -1) if side * side == len(tokens) else tokens[None]
                ax.imshow(grid, cmap="viridis")
    fig.suptitle(f"{puzzle['split']} puzzle {puzzle['index']}: {puzzle['name']}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("show", help="render one puzzle of a built dataset")
    p.add_argument("path")
    p.add_argument("--index", type=int, default=0, help="puzzle index within the split")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--png", default=None, help="also save a picture to this file")
    p.set_defaults(func=_show_cmd)


def _show_cmd(args: argparse.Namespace) -> int:
    puzzle = load_puzzle(args.path, args.index, args.split)
    print_puzzle(puzzle)
    if args.png:
        print(f"wrote {save_png(puzzle, args.png)}")
    return 0
