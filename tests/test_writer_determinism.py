"""x264 with mb-tree rate control gave different bytes for the same frames about one run in
three; the shard writer must be reproducible (the synthetic benchmark promises same seed,
same bytes, whatever the number of worker processes)."""

import hashlib

from gradharmony.data.synthetic.generate import render_planned_clip
from gradharmony.data.synthetic.plan import ClipSize, plan_split
from gradharmony.data.writer import encode_mp4


def test_same_frames_same_bytes_every_time():
    size = ClipSize()
    clip = plan_split("retrieval", 2, seed=7, size=size)[1]
    frames, audio = render_planned_clip(clip, size)
    digests = {hashlib.md5(encode_mp4(frames, size.fps, audio, size.audio_rate)).hexdigest()
               for _ in range(12)}
    assert len(digests) == 1
