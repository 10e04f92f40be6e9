"""``gradharmony pretrain --config configs/NAME.yaml [key=value ...]``.

Exit status: 0 on success, 2 on a usage or configuration error (found before any work; one
line naming the option or key), 1 when the run stopped on repeated non-finite steps. The
``key=value`` overrides may come before, between or after the options.

Example:
    >>> main(["--print-config", "data.kind=random", "steps=5"])  # doctest: +ELLIPSIS
    name: run
    ...
    0
"""

from __future__ import annotations

import json
import sys

import yaml
from omegaconf import OmegaConf

from gradharmony.cli import Parser
from gradharmony.errors import one_line
from gradharmony.train.config import ConfigError, load_config


def _parser() -> Parser:
    p = Parser(
        prog="gradharmony pretrain",
        description="Pre-train VATT with cross-modality gradient harmonization. Launch with "
                    "`torchrun --nproc_per_node=N gradharmony pretrain ...` for several "
                    "processes (batch_size is global).")
    p.add_argument("--config", help="YAML preset, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="OmegaConf overrides, e.g. method=gr granularity=sample optim.lr=3e-4")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony pretrain``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.config is None and not args.overrides:
        parser.error("no configuration: expected --config configs/NAME.yaml and/or "
                     "key=value overrides")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"gradharmony pretrain: config error: {err}", file=sys.stderr)
        return 2
    except yaml.YAMLError as err:
        print(f"gradharmony pretrain: config error: --config {args.config!r} is not valid YAML: "
              f"{one_line(err)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    from gradharmony.train.distributed import teardown
    from gradharmony.train.loop import NonFiniteError, pretrain

    try:
        summary = pretrain(cfg, progress=not args.quiet)
    except ConfigError as err:
        print(f"gradharmony pretrain: config error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"gradharmony pretrain: stopped: {err}", file=sys.stderr)
        return 1
    finally:
        teardown()
    if args.quiet:
        print(json.dumps(summary))
    return 0
