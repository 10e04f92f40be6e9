"""Media fixtures shared by the data tests (not a test module)."""

import io

import av
import numpy as np


def garble_audio(data: bytes) -> bytes:
    """Remux an mp4 with its audio packets replaced by random bytes."""
    rng = np.random.default_rng(0)
    src = av.open(io.BytesIO(data))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for p in src.demux():
            if p.dts is None:
                continue
            if p.stream.type == "audio":
                q = av.Packet(rng.integers(0, 256, p.size, dtype=np.uint8).tobytes())
                q.pts, q.dts, q.time_base = p.pts, p.dts, p.time_base
                q.stream = streams[p.stream.index]
                out.mux(q)
            else:
                p.stream = streams[p.stream.index]
                out.mux(p)
    src.close()
    return buf.getvalue()
