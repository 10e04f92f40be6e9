"""Where every trainable parameter enters the losses' autograd graph, and what accounts for it.

A *use* of a parameter is a node of the graph that takes it as an input. A use inside a
recorded call (between the call's outputs and its inputs) is accounted for by that call's
rule. Any other use is followed towards the losses through batch-free tensors until the
first node whose output gains the batch on dim 0 (a position table added to the tokens, a
class token expanded over the batch, a projection multiplied by batched features): the
*landing*. Each group's part is the gradient at the landing masked to the group's rows,
pulled back to the parameter (:class:`Landings`). Scalar parameters used outside every
recorded call (a contrastive temperature), parameters used only after the model's forward
returned (in the loss) and those named in ``loss_params`` are *loss-level*. A use that
lands nowhere raises, naming the parameter.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from ._backward import _reach


@dataclass
class Coverage:
    """What accounts for each parameter in one backward.

    ``landings`` maps a landing node to the parameters pulled back from it and ``slots`` a
    landing node to the indices of its inputs (``next_functions``) through which they are
    reached; ``loss_level`` lists the loss-level parameters; ``dense`` the ids of parameters
    with more than one source (tied, or used both inside a call and outside), whose
    per-group gradients are summed before the Gramian.
    """

    landings: dict = field(default_factory=dict)
    slots: dict = field(default_factory=dict)
    loss_level: list[nn.Parameter] = field(default_factory=list)
    dense: set[int] = field(default_factory=set)


def _meta_shape(node, nr: int = 0) -> tuple | None:
    meta = node._input_metadata
    return tuple(meta[nr].shape) if nr < len(meta) else None


def _gains_batch(out: tuple, inp: tuple, batch: int) -> bool:
    """Whether a node turning ``inp`` into ``out`` put the batch on dim 0 of ``out``."""
    if not out or out[0] % batch or out[0] < batch:
        return False
    return len(out) > len(inp) or (len(inp) > 0 and out[0] != inp[0])


def _inside(call, nodes: set) -> set:
    """The nodes of a call: reachable from its outputs without passing its inputs."""
    stops = set(call.stops)
    seen = {e.node for e in call.edges if e.node in nodes and e.node not in stops}
    stack = list(seen)
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is None or child in seen or child in stops:
                continue
            seen.add(child)
            stack.append(child)
    return seen


def analyse(losses, calls, params, names, batch, loss_params, outputs=()) -> Coverage:
    """Account for every trainable parameter the losses reach; raise listing the others.

    ``calls`` are the recorded calls kept for this backward, ``params`` the trainable
    parameters with their ``names``, ``batch`` the number of triplets B, ``loss_params`` the
    ids of parameters declared loss-level, ``outputs`` the autograd nodes of the model's
    outputs when its forward ran (a parameter used only after them is loss-level).
    """
    nodes = _reach([loss.grad_fn for loss in losses])
    in_model = _reach(list(outputs)) if outputs else None
    roots = {loss.grad_fn for loss in losses}
    parents = defaultdict(list)
    for node in nodes:
        for child, nr in node.next_functions:
            if child is not None:
                parents[child].append((node, nr))
    acc = {}
    for p in params:
        node = get_gradient_edge(p).node
        if node in nodes:
            acc[id(p)] = node
    uses = {i: {n for n, _ in parents[node]} for i, node in acc.items()}
    by_id = {id(p): p for p in params}
    covered: dict[int, set] = defaultdict(set)
    sources: dict[int, set] = defaultdict(set)
    for call in calls:
        inside = _inside(call, nodes)
        for name in call.covers:
            i = id(call.module.get_parameter(name))
            hit = uses.get(i, set()) & inside
            if hit:
                covered[i] |= hit
                sources[i].add(id(call.module))
    inside = [names[i] for i in loss_params if covered.get(i)]
    if inside:
        raise ValueError(f"loss_params {inside} are used inside recorded layer calls")
    cov = Coverage()
    bad = []
    for i, node in acc.items():
        free = uses[i] - covered[i]
        if not free:
            continue
        p = by_id[i]
        after = in_model is not None and not (free & in_model) and not covered[i]
        if i in loss_params or after or (p.dim() == 0 and not covered[i]):
            cov.loss_level.append(p)
            continue
        found = _walk(free, p, parents, roots, batch)
        if found is None:
            bad.append(names[i])
            continue
        for landing in found:
            cov.landings.setdefault(landing, []).append(p)
        sources[i].add("landing")
        for landing, slots in _check_single(found, free, uses[i], node, nodes, names[i]).items():
            cov.slots.setdefault(landing, set()).update(slots)
    if bad:
        raise RuntimeError(
            f"parameters {bad} reach the losses without passing a recorded layer call or a "
            "tensor that holds the batch on dim 0, so their per-triplet part is undefined; "
            "give their module a rule (register_rule), or pass loss_params=[...] to treat "
            "them as loss-level parameters (they then get the weighted plain gradient)"
        )
    cov.dense = {i for i, s in sources.items() if len(s) > 1}
    return cov


def _walk(free: set, p: Tensor, parents, roots: set, batch: int) -> set | None:
    """Landing nodes of the uses ``free`` of ``p``, or None when a path reaches a loss
    without gaining the batch."""
    found = set()
    stack = [(u, tuple(p.shape)) for u in free]
    seen = set()
    while stack:
        node, inp = stack.pop()
        if (node, inp) in seen:
            continue
        seen.add((node, inp))
        out = _meta_shape(node)
        if len(node._input_metadata) == 1 and _gains_batch(out, inp, batch):
            found.add(node)
            continue
        if node in roots or not parents[node]:
            return None
        for parent, nr in parents[node]:
            stack.append((parent, _meta_shape(node, nr) or ()))
    return found


def _check_single(found: set, free: set, uses: set, acc, nodes: set, name: str) -> dict:
    """A landing must reach the parameter only through the uses that landed there.

    Returns, per landing, the indices of its inputs through which the parameter is reached.
    """
    leading = {acc}
    stack = [acc]
    parents = defaultdict(list)
    for node in nodes:
        for child, _ in node.next_functions:
            if child is not None:
                parents[child].append(node)
    while stack:
        for parent in parents[stack.pop()]:
            if parent not in leading:
                leading.add(parent)
                stack.append(parent)
    others = uses - free
    for landing in found:
        below = _reach([landing], within=leading)
        if below & others or len(found) > 1 and (below & found) - {landing}:
            raise RuntimeError(
                f"parameter {name!r} enters the graph again below where its use outside the "
                "recorded layers meets the batch; its per-triplet part cannot be separated"
            )
    return {
        landing: {k for k, (child, _) in enumerate(landing.next_functions) if child in leading}
        for landing in found
    }


_SUMMING = {"AddBackward0": 1, "SubBackward0": -1, "ExpandBackward0": 1}


class Landings:
    """Per-group gradients of the parameters pulled back from their landing nodes.

    A hook on each landing node takes the loss's gradient there just before autograd runs the
    node (while what it saved is alive) and pulls each group's rows back to the parameters.
    Where the landing broadcasts its batch-free inputs (an add of a position table, the
    expand of a class token), the gradient at such an input is the group's rows summed over
    the broadcast dimensions: that sum is taken directly, and pulled on through what lies
    between the input and the parameters (a view, a slice, a lookup) as one batched backward
    of ``[G, *input]``. Any other landing (a projection multiplied by batched features) is
    pulled back as a whole from the gradient masked to each group's rows
    (``is_grads_batched``, in chunks of groups). A landing autograd does not run (nothing
    recorded lies below it) is pulled back afterwards from the captured gradient: its graph
    is then untouched.
    """

    def __init__(self, landings: dict, groups: int, num_losses: int, chunk_elems: int = 1 << 22,
                 *, slots: dict | None = None):  # fmt: skip
        self.landings, self.G, self.L = landings, groups, num_losses
        self.chunk_elems = chunk_elems
        self.slots = slots or {}
        self.edges = [GradientEdge(node, 0) for node in landings]
        self.dense: dict[int, list] = {}
        self.params = {id(p): p for ps in landings.values() for p in ps}
        for i in self.params:
            self.dense[i] = [None] * num_losses
        self.done: set = set()
        self.source = None
        self._busy = False
        self._handles = []

    def attach(self, source) -> None:
        """Hook the landing nodes; ``source.current`` names the loss whose backward runs."""
        self.source = source
        for node in self.landings:
            self._handles.append(node.register_prehook(self._hook(node)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, node):
        def hook(grad_outputs):
            loss = None if self.source is None else self.source.current
            if self._busy or loss is None or grad_outputs[0] is None:
                return None
            self.pull(node, loss, grad_outputs[0])
            return None

        return hook

    def absorb(self, index: int, loss: int, delta: Tensor) -> None:
        """The captured gradient at landing ``index`` (used when its hook did not run)."""
        node = list(self.landings)[index]
        if (node, loss) not in self.done:
            self.pull(node, loss, delta)

    def pull(self, node, loss: int, delta: Tensor) -> None:
        self.done.add((node, loss))
        self._busy = True
        try:
            slots = self._broadcast_slots(node, delta)
            if slots is None:
                self._pull_masked(node, loss, delta)
            else:
                self._pull_summed(node, loss, delta, slots)
        finally:
            self._busy = False

    def _broadcast_slots(self, node, delta: Tensor) -> list[tuple[int, tuple]] | None:
        """``(input index, input shape)`` of the inputs leading to the parameters when the
        landing only broadcasts them over the batch (a summing op), else None."""
        name = type(node).__name__
        slots = self.slots.get(node)
        if name not in _SUMMING or not slots or delta.dim() == 0:
            return None
        out = tuple(delta.shape)
        found = []
        for k in sorted(slots):
            child, nr = node.next_functions[k]
            shape = tuple(child._input_metadata[nr].shape)
            full = (1,) * (len(out) - len(shape)) + shape
            if len(full) != len(out) or full[0] != 1 or out[0] % self.G:
                return None
            if any(s not in (1, o) for s, o in zip(full, out)):
                return None
            found.append((k, shape))
        return found

    def _pull_summed(self, node, loss: int, delta: Tensor, slots) -> None:
        """Per-group sums of ``delta`` over the broadcast dimensions of each input, pulled on
        to the parameters."""
        G, out = self.G, tuple(delta.shape)
        dtype = torch.promote_types(delta.dtype, torch.float32)
        grouped = delta.detach().to(dtype).reshape(G, out[0] // G, *out[1:])
        params = self.landings[node]
        for k, shape in slots:
            full = (1,) * (len(out) - len(shape)) + shape
            dims = [0] + [d for d in range(1, len(out)) if full[d] == 1 and out[d] != 1]
            g = grouped.sum([d + 1 for d in dims]).reshape(G, *shape)
            if k > 0 and type(node).__name__ != "ExpandBackward0":
                g = g * (_SUMMING[type(node).__name__] * float(node._saved_alpha))
            child, nr = node.next_functions[k]
            variable = getattr(child, "variable", None)
            if variable is not None and any(variable is p for p in params):
                self._add(variable, loss, 0, g)
                continue
            self._pull_chain(GradientEdge(child, nr), params, loss, g)

    def _pull_chain(self, edge: GradientEdge, params, loss: int, g: Tensor) -> None:
        """Pull per-group gradients ``g [G, *shape]`` at ``edge`` back to ``params``."""
        dtype = edge.node._input_metadata[edge.output_nr].dtype
        step = max(1, self.chunk_elems // max(g[0].numel(), 1))
        for g0 in range(0, self.G, step):
            part = g[g0 : g0 + step].to(dtype)
            grads = torch.autograd.grad(edge, params, part, retain_graph=True,
                                        allow_unused=True, is_grads_batched=True)  # fmt: skip
            for p, gp in zip(params, grads):
                if gp is not None:
                    self._add(p, loss, g0, gp.float())

    def _pull_masked(self, node, loss: int, delta: Tensor) -> None:
        params = self.landings[node]
        G, n = self.G, delta.shape[0] // self.G
        step = max(1, self.chunk_elems // max(delta.numel(), 1))
        grouped = delta.detach().reshape(G, n, *delta.shape[1:])
        for g0 in range(0, G, step):
            k = min(step, G - g0)
            masked = delta.new_zeros(k, G, n, *delta.shape[1:])
            masked[torch.arange(k), torch.arange(g0, g0 + k)] = grouped[g0 : g0 + k]
            grads = torch.autograd.grad(
                GradientEdge(node, 0), params, masked.reshape(k, *delta.shape),
                retain_graph=True, allow_unused=True, is_grads_batched=True,
            )  # fmt: skip
            for p, g in zip(params, grads):
                if g is not None:
                    self._add(p, loss, g0, g.float())

    def _add(self, p, loss: int, g0: int, g: Tensor) -> None:
        per_loss = self.dense[id(p)]
        if per_loss[loss] is None:
            per_loss[loss] = torch.zeros(self.G, *p.shape, device=g.device)
        per_loss[loss][g0 : g0 + g.shape[0]] += g
