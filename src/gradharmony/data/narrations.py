"""The narrations of shards, read once for every vocabulary the project builds.

``gradharmony build-vocab`` and pre-training without ``data.vocab`` both build the narration
vocabulary from :func:`narrations`, so the two give the same vocabulary on the same shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from gradharmony.data.sources import ShardSet
from gradharmony.data.streams import DEFAULT_BACKOFF, DEFAULT_RETRIES, iter_tar_groups


def narrations(patterns: str | list[str], progress: bool = False, skipped: dict | None = None,
               retries: int = DEFAULT_RETRIES, retry_backoff: float = DEFAULT_BACKOFF
               ) -> Iterator[str]:
    """Yield the narrations of the shards matching ``patterns``: each non-empty ``.txt`` and
    the non-empty ``neighbors`` of each ``.json`` (so candidates from clips outside the set
    are known). A sample whose ``.txt`` is not UTF-8 or whose ``.json`` does not parse gives
    nothing, as the loader skips it.

    Patterns may be URLs (:mod:`gradharmony.data.streams`); each shard is read once (a remote
    one re-opened up to ``retries`` times when its stream fails). Shards that fail are
    counted by reason into ``skipped``.

    Example:
        >>> import io, json, tarfile, tempfile
        >>> path = tempfile.mkdtemp() + "/s.tar"
        >>> with tarfile.open(path, "w") as tar:
        ...     for name, data in [("a.txt", b" a red ball "), ("a.json", b'{"neighbors": [""]}'),
        ...                        ("b.txt", b""), ("b.json", b'{"neighbors": ["it rolls"]}')]:
        ...         info = tarfile.TarInfo(name); info.size = len(data)
        ...         tar.addfile(info, io.BytesIO(data))
        >>> list(narrations(path))
        ['a red ball', 'it rolls']
    """
    from tqdm import tqdm

    skipped = {} if skipped is None else skipped
    for path in tqdm(ShardSet(patterns).paths(), desc="reading narrations", unit="shard",
                     disable=not progress):
        for group in iter_tar_groups(path, retries=retries, backoff=retry_backoff):
            if isinstance(group, Exception):
                skipped[group.reason] = skipped.get(group.reason, 0) + 1
                break
            _, files = group
            try:
                text = files.get("txt", b"").decode("utf-8").strip()
                meta = json.loads(files["json"]) if "json" in files else {}
            except (UnicodeDecodeError, ValueError):
                continue
            if text:
                yield text
            neighbors = meta.get("neighbors") if isinstance(meta, dict) else None
            for n in neighbors if isinstance(neighbors, list) else []:
                if isinstance(n, str) and n.strip():
                    yield n
