"""Per-loss gradients at recorded layer outputs, freeing each part of the graph after its last use.

Asking autograd for ``d loss_l / d outputs`` once per loss with ``retain_graph=True`` for all
but the last keeps the whole graph alive, including the parts only one early loss reaches
(the audio pass of a video-audio loss), until the caller drops its losses. Here the graph is
split by which losses reach each node. A loss's *own* part (nodes no other loss reaches) is
traversed once without retaining it, and the backward stops at the *frontier*: the input
slots where it enters the *shared* part (nodes two or more losses reach). The shared part is
then traversed once per loss, seeded with that loss's frontier gradients, and freed by the
last traversal. When the shared part cannot be entered cleanly (one frontier slot lies below
another, so stopping there would run shared nodes early) the plain per-loss schedule is used.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

Chunk = tuple[int, list[int], tuple[Tensor | None, ...]]


def _reach(starts: list, within: set | None = None) -> set:
    """Nodes reachable from any of ``starts`` through ``next_functions`` (``starts`` included),
    only through nodes of ``within`` when it is given."""
    seen = {s for s in starts if s is not None and (within is None or s in within)}
    stack = list(seen)
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is None or child in seen or (within is not None and child not in within):
                continue
            seen.add(child)
            stack.append(child)
    return seen


def _ancestors(nodes: set, targets: set) -> set:
    """Nodes of ``nodes`` from which some node of ``targets`` is reachable (targets included)."""
    parents = defaultdict(list)
    for node in nodes:
        for child, _ in node.next_functions:
            if child is not None:
                parents[child].append(node)
    seen = targets & nodes
    stack = list(seen)
    while stack:
        for parent in parents[stack.pop()]:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


class OutputGradients:
    """Gradients of each loss at recorded output edges, yielded in chunks as they are computed.

    Iterating yields ``(loss index, edge indices, gradients)``; every (loss, edge) pair appears
    at most once, and a pair that never appears has no gradient (the loss does not reach the
    edge). ``current`` is the loss whose backward is running (for node hooks).
    ``reached[i]`` is the set of losses whose graph contains edge ``i``; ``split`` says
    whether the own/shared schedule is used (else one backward per loss over the whole graph).
    ``broadcast`` maps an edge index to ``(op, edge shape, result shape)`` when an
    elementwise op or ``expand``/``repeat`` spreads that output over a new leading dimension
    or a size-1 dim 0 (its rows cannot be a triplet's then). Iterate once: the graph is
    consumed.

    Example:
        >>> from torch.autograd.graph import get_gradient_edge
        >>> x = torch.randn(4, 3, requires_grad=True)
        >>> shared = x * 2
        >>> a, b = (shared * 3).sum(), (shared ** 2).sum()
        >>> grads = OutputGradients([a, b], [get_gradient_edge(shared)])
        >>> sorted((l, g[0].shape) for l, _, g in grads)
        [(0, torch.Size([4, 3])), (1, torch.Size([4, 3]))]
    """

    def __init__(self, losses: list[Tensor], edges: list[GradientEdge]):
        self.losses, self.edges = losses, edges
        self.current: int | None = None  # the loss whose backward is running
        reach = [_reach([loss.grad_fn]) for loss in losses]
        count = Counter(node for nodes in reach for node in nodes)
        self.reached = [{l for l, nodes in enumerate(reach) if e.node in nodes} for e in edges]
        shared = {node for node, c in count.items() if c > 1}
        useful = _ancestors(set(count), {e.node for e in edges})
        self.broadcast = _broadcasts(set(count), edges)
        self._root_shared = [loss.grad_fn in shared for loss in losses]
        self._plans = [self._plan(l, reach[l], shared, useful) for l in range(len(losses))]
        self.split = all(p is not None for p in self._plans)

    def _plan(self, l: int, nodes: set, shared: set, useful: set):
        """(own edge indices, shared edge indices, frontier slots), or None if not separable."""
        root = self.losses[l].grad_fn
        own = [i for i, r in enumerate(self.reached) if r == {l}]
        mine = [i for i, r in enumerate(self.reached) if l in r and len(r) > 1]
        if root in shared:
            return own, mine, [GradientEdge(root, self.losses[l].output_nr)]
        frontier = {}
        for node in nodes - shared:
            for child, nr in node.next_functions:
                if child in useful and child in shared:
                    frontier[(child, nr)] = GradientEdge(child, nr)
        entry = {child for child, _ in frontier}
        below = _reach([c for n in entry for c, _ in n.next_functions], within=useful)
        if below & entry:
            return None
        return own, mine, list(frontier.values())

    def __iter__(self) -> Iterator[Chunk]:
        if not self.split:
            everything = list(range(len(self.edges)))
            last = len(self.losses) - 1
            for l, loss in enumerate(self.losses):
                self.current = l
                grads = torch.autograd.grad(
                    loss, self.edges, retain_graph=l < last, allow_unused=True
                )
                self.current = None
                yield l, everything, grads
            return
        seeds = []
        for l, (own, _, frontier) in enumerate(self._plans):
            loss = self.losses[l]
            if self._root_shared[l]:  # another loss depends on this one: no own part
                seeds.append((frontier, [torch.ones_like(loss)]))
                continue
            wanted = [self.edges[i] for i in own] + frontier
            if not wanted:
                seeds.append(([], []))
                continue
            self.current = l
            grads = torch.autograd.grad(loss, wanted, allow_unused=True)
            self.current = None
            if own:
                yield l, own, grads[: len(own)]
            found = [(e, g) for e, g in zip(frontier, grads[len(own) :]) if g is not None]
            seeds.append(([e for e, _ in found], [g for _, g in found]))
        active = [l for l, (edges, _) in enumerate(seeds) if edges and self._plans[l][1]]
        for l in active:
            (edges, values), mine = seeds[l], self._plans[l][1]
            self.current = l
            grads = torch.autograd.grad(
                edges,
                [self.edges[i] for i in mine],
                grad_outputs=values,
                retain_graph=l != active[-1],
                allow_unused=True,
            )
            self.current = None
            yield l, mine, grads


_BROADCASTING = (
    "Add", "Sub", "Mul", "Div", "Pow", "Maximum", "Minimum", "Where", "Addcmul", "Addcdiv",
    "Lerp", "Expand", "Repeat",
)  # fmt: skip


def _broadcasts(nodes: set, edges: list[GradientEdge]) -> dict[int, tuple]:
    """Edges whose tensor a consumer broadcasts along a new leading or a size-1 dim 0."""
    index = {(e.node, e.output_nr): i for i, e in enumerate(edges)}
    found = {}
    for node in nodes:
        name = type(node).__name__
        if not name.startswith(_BROADCASTING):
            continue
        for child, nr in node.next_functions:
            i = index.get((child, nr))
            if i is None or i in found:
                continue
            mine = tuple(child._input_metadata[nr].shape)
            for meta in node._input_metadata:
                out = tuple(meta.shape)
                if len(out) > len(mine) or (out and mine and mine[0] == 1 < out[0]):
                    found[i] = (name, mine, out)
                    break
    return found
