"""Which rule computes a module's per-group parameter gradients: a registry of layer rules.

A rule is a class (see ``_layers.ModuleWork``) that turns a module's recorded calls and the
per-loss gradients at their outputs into per-group gradients of the module's parameters. A
rule is registered for exact module types; a subclass uses its parent's rule only when it
changes none of the methods the rule relies on (``forward`` and ``_conv_forward``) and the
rule accepts its configuration. Every other module with trainable parameters goes to the
generic rule (per-group vector-Jacobian products with ``torch.func``).
"""

from __future__ import annotations

from torch import nn

_RULES: dict[type, type] = {}
_FORWARD_METHODS = ("forward", "_conv_forward")


def register_rule(*module_types: type):
    """Class decorator: use the decorated rule for modules of exactly these types.

    Example:
        >>> import torch
        >>> from gradharmony.harmonize._rules import register_rule, rule_for
        >>> class Scale(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.s = nn.Parameter(torch.ones(2))
        >>> @register_rule(Scale)
        ... class ScaleRule:
        ...     @staticmethod
        ...     def accepts(module):
        ...         return True
        >>> rule_for(Scale()) is ScaleRule
        True
        >>> unregister_rule(Scale)
    """
    if not module_types or not all(isinstance(t, type) for t in module_types):
        raise TypeError("register_rule takes one or more nn.Module subclasses")

    def decorate(rule: type) -> type:
        for t in module_types:
            _RULES[t] = rule
        return rule

    return decorate


def unregister_rule(module_type: type) -> None:
    """Forget the rule of ``module_type`` (its modules then take the generic rule)."""
    _RULES.pop(module_type, None)


def rule_for(module: nn.Module) -> type | None:
    """The registered rule for ``module``, or None (the generic rule applies)."""
    t = type(module)
    rule = _RULES.get(t)
    if rule is None:
        base = next((b for b in t.__mro__[1:] if b in _RULES), None)
        if base is None:
            return None
        same = all(getattr(t, m, None) is getattr(base, m, None) for m in _FORWARD_METHODS)
        if not same:
            return None
        rule = _RULES[base]
    return rule if rule.accepts(module) else None
