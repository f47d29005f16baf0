"""A small Sudoku solver and puzzle generator for `hrm-data generate sudoku` (offline test data).

Candidates are 9-bit masks (bit d-1 = digit d); propagation applies naked and hidden singles, and the
search branches on the cell with the fewest candidates. `guesses` counts the values tried at branch
points, our stand-in for the dataset's tdoku "number of guesses" rating (0 = solved by propagation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALL = 0x1FF
ROWS = [tuple(r * 9 + c for c in range(9)) for r in range(9)]
COLS = [tuple(r * 9 + c for r in range(9)) for c in range(9)]
BOXES = [tuple((br * 3 + r) * 9 + bc * 3 + c for r in range(3) for c in range(3))
         for br in range(3) for bc in range(3)]
UNITS = ROWS + COLS + BOXES
PEERS = [tuple(sorted({p for u in UNITS if c in u for p in u} - {c})) for c in range(81)]
BOX_OF = [(c // 27) * 3 + (c % 9) // 3 for c in range(81)]
POPCOUNT = [bin(m).count("1") for m in range(ALL + 1)]
BITS = [tuple(1 << d for d in range(9) if m >> d & 1) for m in range(ALL + 1)]
DIGIT = {1 << d: d + 1 for d in range(9)}


@dataclass
class SolveResult:
    count: int                   # solutions found, at most the limit
    solution: list[int] | None   # the first solution (81 digits) or None
    guesses: int                 # values tried at branch points


def candidates(grid: list[int]) -> list[int] | None:
    """Candidate masks for an 81-cell grid (0 = blank), or None when two givens clash."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for c, v in enumerate(grid):
        if v:
            b, r, k, x = 1 << (v - 1), c // 9, c % 9, BOX_OF[c]
            if (rows[r] | cols[k] | boxes[x]) & b:
                return None
            rows[r] |= b
            cols[k] |= b
            boxes[x] |= b
    return [1 << (v - 1) if v else ALL & ~(rows[c // 9] | cols[c % 9] | boxes[BOX_OF[c]])
            for c, v in enumerate(grid)]


def _propagate(cand: list[int], queue: list[int]) -> bool:
    """Eliminate queued singles from peers, then place hidden singles, to a fixpoint; False if stuck."""
    while True:
        while queue:
            c = queue.pop()
            b = cand[c]
            for p in PEERS[c]:
                m = cand[p]
                if m & b:
                    m ^= b
                    if not m:
                        return False
                    cand[p] = m
                    if POPCOUNT[m] == 1:
                        queue.append(p)
        for unit in UNITS:
            once = twice = 0
            for c in unit:
                m = cand[c]
                twice |= once & m
                once |= m
            if once != ALL:
                return False
            hidden = once & ~twice
            if hidden:
                for c in unit:
                    m = cand[c]
                    if m & hidden and POPCOUNT[m] > 1:
                        b = m & hidden
                        if POPCOUNT[b] > 1:  # two digits can only go in this one cell
                            return False
                        cand[c] = b
                        queue.append(c)
        if not queue:
            return True


def _search(cand: list[int], limit: int, state: SolveResult) -> None:
    best, best_n = -1, 10
    for c in range(81):
        n = POPCOUNT[cand[c]]
        if 1 < n < best_n:
            best, best_n = c, n
            if n == 2:
                break
    if best < 0:
        state.count += 1
        if state.solution is None:
            state.solution = [DIGIT[m] for m in cand]
        return
    for b in BITS[cand[best]]:
        state.guesses += 1
        trial = cand[:]
        trial[best] = b
        if _propagate(trial, [best]):
            _search(trial, limit, state)
            if state.count >= limit:
                return


def solve(grid: list[int], limit: int = 1) -> SolveResult:
    """Find up to `limit` solutions of an 81-cell grid (0 = blank)."""
    state = SolveResult(0, None, 0)
    cand = candidates(list(grid))
    if cand is None:
        return state
    if _propagate(cand, [c for c in range(81) if not grid[c] and POPCOUNT[cand[c]] == 1]):
        _search(cand, limit, state)
    return state


def count_solutions(grid: list[int], limit: int = 2) -> int:
    return solve(grid, limit).count


def _has_other_solution(grid: list[int], cell: int, value: int) -> bool:
    """Whether blanking `cell` (which holds `value`) lets some other digit go there."""
    saved, grid[cell] = grid[cell], 0
    cand = candidates(grid)
    grid[cell] = saved
    cand[cell] &= ~(1 << (value - 1))
    if not cand[cell]:
        return False
    queue = [c for c in range(81) if (not grid[c] or c == cell) and POPCOUNT[cand[c]] == 1]
    if not _propagate(cand, queue):
        return False
    state = SolveResult(0, None, 0)
    _search(cand, 1, state)
    return state.count > 0


def random_solution(rng: np.random.Generator) -> list[int]:
    """A uniformly-seeded random full grid: fill three independent boxes, then solve with shuffled digits."""
    grid = [0] * 81
    for box in (BOXES[0], BOXES[4], BOXES[8]):  # the diagonal boxes share no row, column or box
        for c, v in zip(box, rng.permutation(9) + 1):
            grid[c] = int(v)
    relabel = rng.permutation(9) + 1  # the solver is deterministic; relabel to spread the rest too
    solution = solve(grid, 1).solution
    assert solution is not None  # diagonal boxes always extend to a full grid
    return [int(relabel[v - 1]) for v in solution]


def generate_puzzle(rng: np.random.Generator, target_clues: int = 24) -> tuple[list[int], list[int]]:
    """(puzzle, solution): blank cells of a random full grid while the solution stays unique."""
    solution = random_solution(rng)
    grid = solution[:]
    clues = 81
    for cell in rng.permutation(81).tolist():
        if clues <= target_clues:
            break
        if not _has_other_solution(grid, cell, grid[cell]):
            grid[cell] = 0
            clues -= 1
    return grid, solution


def to_string(grid: list[int], blank: str = ".") -> str:
    return "".join(str(v) if v else blank for v in grid)
