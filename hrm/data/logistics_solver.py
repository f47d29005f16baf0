"""Exact routing on a 4-neighbour grid with integer entry costs: the labels of `hrm-data build logistics`.

A route's cost is the sum of the entry costs of every cell after the start (0 marks a cell that cannot be
entered). Dijkstra gives the distances; because every cost is at least 1 the shortest-path graph is acyclic,
so the optimal routes are counted on it in the order Dijkstra settles the cells. An instance is a usable
label only when exactly one optimum exists (exact match then means something). The Manhattan-greedy route is
the obvious heuristic the generator rejects instances for, so that the labels are not that easy.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

# Neighbour order: down, left, right, up (rows, cols). Only the greedy route's tie-break depends on it.
MOVES = ((1, 0), (0, -1), (0, 1), (-1, 0))

Cell = tuple[int, int]


@dataclass
class Solution:
    """Cost of the optimum (None when the goal cannot be reached), how many optimal routes there are, and one
    of them as cells from start to goal (the only one when count == 1)."""

    cost: int | None
    count: int
    route: list[Cell] | None


def _neighbours(h: int, w: int, i: int) -> list[int]:
    r, c = divmod(i, w)
    return [(r + dr) * w + c + dc for dr, dc in MOVES if 0 <= r + dr < h and 0 <= c + dc < w]


def solve(costs: np.ndarray, start: Cell, goal: Cell) -> Solution:
    """Optimal routes from `start` to `goal` on `costs` [h, w] (entry cost per cell, 0 = impassable)."""
    h, w = costs.shape
    flat = costs.astype(np.int64).ravel().tolist()
    s, g = start[0] * w + start[1], goal[0] * w + goal[1]
    if flat[g] <= 0:
        return Solution(None, 0, None)
    inf = 1 << 62
    dist = [inf] * (h * w)
    count = [0] * (h * w)
    done = [False] * (h * w)
    dist[s], count[s] = 0, 1
    heap = [(0, s)]
    while heap:
        d, u = heapq.heappop(heap)
        if done[u]:
            continue
        done[u] = True
        if u != s:  # every optimal predecessor is settled already (it is strictly closer)
            count[u] = sum(count[p] for p in _neighbours(h, w, u) if done[p] and dist[p] + flat[u] == d)
        if u == g:
            break
        for v in _neighbours(h, w, u):
            cost = flat[v]
            if cost > 0 and not done[v] and d + cost < dist[v]:
                dist[v] = d + cost
                heapq.heappush(heap, (d + cost, v))
    if not done[g]:
        return Solution(None, 0, None)
    route = [g]
    while route[-1] != s:
        u = route[-1]
        route.append(next(p for p in _neighbours(h, w, u) if done[p] and dist[p] + flat[u] == dist[u]))
    return Solution(dist[g], count[g], [divmod(i, w) for i in reversed(route)])


def greedy_route(costs: np.ndarray, start: Cell, goal: Cell) -> list[Cell] | None:
    """Always step to the cheapest enterable neighbour closer to the goal (Manhattan); None when stuck."""
    h, w = costs.shape
    route = [start]
    r, c = start
    while (r, c) != goal:
        closer = [(int(costs[r + dr, c + dc]), k, (r + dr, c + dc)) for k, (dr, dc) in enumerate(MOVES)
                  if 0 <= r + dr < h and 0 <= c + dc < w and costs[r + dr, c + dc] > 0
                  and abs(r + dr - goal[0]) + abs(c + dc - goal[1]) < abs(r - goal[0]) + abs(c - goal[1])]
        if not closer:
            return None
        r, c = min(closer)[2]
        route.append((r, c))
    return route


def route_cost(costs: np.ndarray, route: list[Cell]) -> int | None:
    """Cost of a route given as consecutive cells (None when it enters an impassable cell)."""
    total = 0
    for r, c in route[1:]:
        if costs[r, c] <= 0:
            return None
        total += int(costs[r, c])
    return total
