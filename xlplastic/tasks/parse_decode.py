"""The best dependency tree from arc scores: maximum spanning arborescence (Chu-Liu/Edmonds), in NumPy.

Why: each word's argmax head need not form a tree (it can make cycles or hang several words on the
root), while gold UD trees always are one; a parse is scored as the tree it is. A tree here: every word
has one head, following heads from any word reaches the root, and exactly one word hangs on the root.

Layout, as the biaffine head's: scores [n, n + 1], scores[i, j] = score of word i + 1 taking head j
(0 = root, else the 1-based word). Heads come back in the same numbering. -inf (any non-finite value)
forbids an arc; a word's arc to itself is never allowed.

Exactly one root word, exactly: every tree has at least one word on the root, so lowering all root arcs
by a constant larger than any two trees' score difference makes a tree with fewer root words always win;
among single-root trees the constant is paid once by each, so their own scores decide. One unconstrained
Chu-Liu/Edmonds run on the lowered scores is thus the best single-root tree. O(n^3): at most n
contractions of O(n^2) each.
"""

from __future__ import annotations

import numpy as np


def decode_tree(scores) -> np.ndarray:
    """Heads [n] (int64, 0 = root) of the best-scoring tree with exactly one root word."""
    s = np.asarray(scores, np.float64)
    n = s.shape[0]
    if s.shape != (n, n + 1):
        raise ValueError(f"arc scores have shape {s.shape}; expected [n, n + 1] (words x root + words)")
    if n == 0:
        return np.zeros(0, np.int64)
    graph = np.full((n + 1, n + 1), -np.inf)  # graph[dependent, head]; node 0 (the root) has no head
    graph[1:] = np.where(np.isfinite(s), s, -np.inf)
    np.fill_diagonal(graph, -np.inf)
    finite = graph[np.isfinite(graph)]
    spread = finite.max() - finite.min() if finite.size else 0.0
    graph[1:, 0] -= 1.0 + 2 * n * spread  # > any difference of two trees' scores: see the module docstring
    heads = _max_arborescence(graph)[1:]
    if (heads == 0).sum() != 1 or not np.isfinite(graph[np.arange(1, n + 1), heads]).all():
        raise ValueError("no tree with one root word uses only allowed arcs; expected finite scores for one")
    return heads


def is_tree(heads) -> bool:
    """Whether heads (0 = root, 1-based words) form a tree with exactly one word on the root."""
    parent = np.concatenate([[0], np.asarray(heads, np.int64)])
    n = len(parent) - 1
    if n == 0:
        return True
    heads = parent[1:]
    if ((heads < 0) | (heads > n) | (heads == np.arange(1, n + 1))).any() or (heads == 0).sum() != 1:
        return False
    node = np.arange(n + 1)
    for _ in range(n):  # n steps up from anywhere reach the root unless there is a cycle
        node = parent[node]
    return bool((node == 0).all())


def tree_score(scores, heads) -> float:
    """Sum of the arc scores a tree uses."""
    heads = np.asarray(heads, np.int64)
    return float(np.asarray(scores, np.float64)[np.arange(len(heads)), heads].sum())


def _max_arborescence(graph: np.ndarray) -> np.ndarray:
    """Chu-Liu/Edmonds: each node's head in the best arborescence rooted at node 0 (entry 0 is meaningless).

    Take every node's best head; if that has no cycle it is optimal. Otherwise contract the cycle into one
    node whose incoming arcs are scored by what they gain over the cycle arc they replace, solve the
    smaller graph, and expand: the cycle keeps all its arcs but the one the chosen incoming arc breaks.
    """
    if not np.isfinite(graph[1:].max(1)).all():
        raise ValueError("a word has no allowed head; expected a finite score for at least one")
    head = graph.argmax(1)
    head[0] = 0
    cycle = _find_cycle(head)
    if cycle is None:
        return head
    in_cycle = np.zeros(len(graph), bool)
    in_cycle[cycle] = True
    rest = np.flatnonzero(~in_cycle)  # rest[0] is the root, which is never on a cycle
    c, m = np.array(cycle), len(rest)  # in the contracted graph the cycle is node m
    small = np.full((m + 1, m + 1), -np.inf)
    small[:m, :m] = graph[np.ix_(rest, rest)]
    leaving = graph[np.ix_(rest, c)]  # a cycle word heading an outside word
    small[:m, m], leaving_from = leaving.max(1), c[leaving.argmax(1)]
    entering = graph[np.ix_(c, rest)] - graph[c, head[c]][:, None]  # gain over the cycle arc it replaces
    small[m, :m], entering_at = entering.max(0), c[entering.argmax(0)]
    sub = _max_arborescence(small)
    out = head.copy()
    for i in range(1, m):
        out[rest[i]] = rest[sub[i]] if sub[i] < m else leaving_from[i]
    out[entering_at[sub[m]]] = rest[sub[m]]
    return out


def _find_cycle(head: np.ndarray) -> list[int] | None:
    """Nodes of one cycle of the head pointers (node 0 has none), or None."""
    state = np.zeros(len(head), np.int8)  # 0 unseen, 1 on the current walk, 2 known to reach the root
    state[0] = 2
    for start in range(1, len(head)):
        walk, v = [], start
        while state[v] == 0:
            state[v] = 1
            walk.append(v)
            v = head[v]
        if state[v] == 1:
            return walk[walk.index(v):]
        state[walk] = 2
    return None
