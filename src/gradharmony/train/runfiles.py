"""Reading run-directory files back without running anything from them.

Run directories travel (people share trained runs to evaluate, score or continue them), so
every file the package reads back from one is parsed as data only: YAML with a safe loader
and no interpolation, ``.npz`` archives without pickled objects, checkpoints with
``torch.load(weights_only=True)`` (:mod:`gradharmony.train.checkpoint`). A file that would
need more is refused with a :class:`RunFileError` naming the file and the reason; the
``gradharmony`` command turns it into one line on stderr and exit status 2.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> d = Path(tempfile.mkdtemp())
    >>> np.savez(d / "a.npz", x=np.arange(3))
    >>> read_npz(d / "a.npz")["x"].tolist()
    [0, 1, 2]
    >>> np.savez(d / "b.npz", x=np.array([{"a": 1}], dtype=object))
    >>> read_npz(d / "b.npz")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gradharmony.train.runfiles.RunFileError: refusing .../b.npz: array 'x' holds pickled ...
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from gradharmony.errors import InputError

if TYPE_CHECKING:
    import numpy as np


class RunFileError(InputError):
    """A run-directory file that is refused (it would run code, or is not what it should be),
    or a requested file that is missing. The message is one line naming the file; as an
    :class:`~gradharmony.errors.InputError` the command line prints it as one line, exit 2."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read with ``allow_pickle=False``.

    An object array (pickled Python objects) or a file that is not an ``.npz`` archive raises
    :class:`RunFileError` naming the file; nothing of it is unpickled.
    """
    import numpy as np

    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as err:  # a raw pickle renamed to .npz
        raise RunFileError(f"refusing {path}: {_one_line(err)}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise RunFileError(f"cannot read {path}: {_one_line(err)}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise RunFileError(f"refusing {path}: not an .npz archive")
    out = {}
    with z:
        for key in z.files:
            try:
                out[key] = z[key]
            except ValueError:
                raise RunFileError(f"refusing {path}: array {key!r} holds pickled Python "
                                   "objects; run files hold plain numeric or string arrays "
                                   "only") from None
            except (OSError, EOFError, zipfile.BadZipFile) as err:
                raise RunFileError(f"cannot read {path}: {_one_line(err)}") from None
    return out


def _interpolation(node, where: str = "") -> str | None:
    if isinstance(node, dict):
        for k, v in node.items():
            found = _interpolation(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _interpolation(v, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(node, str) and "${" in node:
        return f"{where or '<top>'} = {node!r}"
    return None


def read_config(path: str | os.PathLike) -> dict:
    """A run's ``config.yaml`` as a plain dict: safe YAML loader, no interpolation resolved.

    The trainer writes the configuration resolved, so an interpolation (``${...}``, which
    could read environment variables or call registered resolvers) means the file was
    edited; it is refused with :class:`RunFileError` naming the key.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "config.yaml"
        >>> _ = p.write_text("steps: 5\\nname: a\\n")
        >>> read_config(p)
        {'steps': 5, 'name': 'a'}
        >>> _ = p.write_text("name: ${oc.env:HOME}\\n")
        >>> read_config(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gradharmony.train.runfiles.RunFileError: refusing .../config.yaml: ...(name = ...
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    path = Path(path)
    try:
        # OmegaConf.load parses with a yaml SafeLoader (no Python tags) and caps alias expansion
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        raise RunFileError(f"cannot read {path}: {_one_line(err)}") from None
    if not isinstance(config, dict):
        raise RunFileError(f"refusing {path}: expected a mapping of config keys, "
                           f"got a {type(config).__name__}")
    found = _interpolation(config)
    if found:
        raise RunFileError(f"refusing {path}: it holds an interpolation ({found}); the "
                           "trainer writes configs resolved, so it is not resolved here")
    return config
