"""The generic rule: per-group gradients of any module's parameters with ``torch.func``.

For a module without a dedicated rule (RMSNorm, a channels-first LayerNorm, layer scale,
``nn.MultiheadAttention``, any custom layer), each recorded call's batched inputs are split
into the G groups and the module is re-run on every group under ``vmap``; the vector-Jacobian
product of that group's output gradient gives the group's gradients of the parameters the
call covers (its own, and those of sub-modules it used without calling them). This is exact
when the module treats rows independently; a re-run whose outputs differ from the recorded
ones (rows that interact, randomness) raises instead of giving a wrong gradient.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from ._layers import ModuleWork


def output_tensors(output) -> list[Tensor]:
    """The tensors of a module's output (a tensor, a tuple, a dict, a dataclass of tensors)."""
    if hasattr(output, "to_tuple"):  # model-output containers
        output = output.to_tuple()
    leaves, _ = tree_flatten(output)
    return [t for t in leaves if isinstance(t, Tensor)]


def row_check(out: Tensor, dim: int) -> Tensor:
    """Per-row norms ``[N]`` of ``out`` with its batch on ``dim``."""
    rows = out.detach().movedim(dim, 0)
    return torch.linalg.vector_norm(rows.reshape(rows.shape[0], -1).float(), dim=1)


class GenericWork(ModuleWork):
    """Per-group vector-Jacobian products of a module re-run on each group (``vmap``).

    Each output gradient is folded into per-group parameter gradients as it arrives, so the
    work keeps only the call's inputs (until every loss reaching it delivered) and the
    per-group gradients ``[G, *shape]`` of the covered parameters.
    """

    reduces_on_arrival = True

    @staticmethod
    def input_dims(module: nn.Module, args: tuple, kwargs: dict) -> tuple[list, int]:
        """Batch dimension of every tensor leaf of ``(args, kwargs)`` (None: not batched) and
        the row count: the first tensor's dim 0 is the batch; others with as many rows too."""
        leaves, _ = tree_flatten((args, kwargs))
        first = next((t for t in leaves if isinstance(t, Tensor) and t.dim() > 0), None)
        if first is None:
            return [None] * len(leaves), 0
        n = first.shape[0]
        dims = [0 if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n else None
                for t in leaves]  # fmt: skip
        return dims, n

    @staticmethod
    def output_dim(module: nn.Module, index: int) -> int:
        """Batch dimension of the module's ``index``-th output tensor."""
        return 0

    def absorb(self, index: int, loss: int, delta: Tensor, slot: int = 0) -> None:
        self.reached = True
        call = self.calls[index]
        try:
            grads = self._per_group(call, slot, delta)
        except RuntimeError as err:
            raise RuntimeError(
                f"the generic rule failed on {type(self.module).__name__} (re-run per group "
                f"under torch.func.vmap): {err}. Modules that use randomness (dropout > 0) or "
                "mix the rows of a batch need a dedicated rule (register_rule)"
            ) from err
        for name, g in grads.items():
            self._add(name, loss, g.float())

    def _per_group(self, call, slot: int, delta: Tensor) -> dict[str, Tensor]:
        G, module = self.G, self.module
        leaves, spec = tree_flatten((call.args, call.kwargs))
        dims = call.in_dims
        chunked, where, memo = [], [], {}
        for i, (leaf, d) in enumerate(zip(leaves, dims)):
            if d is None:
                continue
            if id(leaf) not in memo:  # the same tensor twice (self-attention) stays one
                memo[id(leaf)] = len(chunked)
                chunked.append(leaf.unflatten(d, (G, leaf.shape[d] // G)).movedim(d, 0))
            where.append((i, memo[id(leaf)]))
        params = {n: module.get_parameter(n).detach() for n in call.covers}
        buffers = {n: b.clone() for n, b in module.named_buffers()}
        out_index, out_dim = call.out_index[slot], self.output_dim(module, slot)

        def run(ps, parts):
            full = list(leaves)
            for i, k in where:
                full[i] = parts[k]
            args, kwargs = tree_unflatten(full, spec)
            out = functional_call(module, {**ps, **buffers}, args, kwargs, strict=False)
            return output_tensors(out)[out_index]

        def per_group(parts, d):
            y, pull = vjp(lambda ps: run(ps, parts), params)
            return pull(d.to(y.dtype))[0], y

        d = delta.unflatten(out_dim, (G, delta.shape[out_dim] // G)).movedim(out_dim, 0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            grads, y = vmap(per_group, randomness="error")(chunked, d)
        if slot == 0 and call.check is not None:
            self._check_rows(y.movedim(out_dim + 1, 1).flatten(0, 1), call.check)
        return grads

    def _check_rows(self, y: Tensor, check: Tensor) -> None:
        again = row_check(y, 0)
        if not torch.allclose(again, check, rtol=1e-3, atol=1e-6 * float(check.max())):
            raise RuntimeError(
                f"{type(self.module).__name__} gives other outputs when re-run on each group of "
                "rows: its rows interact (batch statistics), it is random, or its batch is not "
                "on the dimension the rule assumes; give it a dedicated rule (register_rule)"
            )
