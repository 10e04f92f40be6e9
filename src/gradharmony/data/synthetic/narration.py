"""Narrations of the synthetic benchmark: templates with synonyms and filler words.

A description names the motion and usually the object's shape and colour (sometimes only one
of them), in one of several sentence forms with spoken-style fillers ("okay so", "right
there"). Off-topic narrations talk about anything but the picture, like the asides of an
instructional video, and share no word with the event vocabulary. Every narration has at most
``max_words`` words (16 by default).

Example:
    >>> import numpy as np
    >>> from gradharmony.data.synthetic.events import Event
    >>> ev = Event("circle", "red", "bouncing", 2.0)
    >>> text = describe(ev, np.random.default_rng(0))
    >>> len(text.split()) <= 16
    True
    >>> off_topic(np.random.default_rng(0)) != text
    True
"""

from __future__ import annotations

import numpy as np

from .events import COLOURS, MOTIONS, SHAPES, Event

__all__ = ["EVENT_WORDS", "MAX_WORDS", "describe", "off_topic"]

MAX_WORDS = 16

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine", "amber"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "lime", "emerald"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "navy", "azure"),
    "purple": ("purple", "violet", "lilac"),
    "white": ("white", "snowy", "ivory"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block", "tile"),
    "triangle": ("triangle", "pyramid", "wedge"),
    "diamond": ("diamond", "rhombus", "gem"),
    "cross": ("cross", "plus sign", "plus"),
    "ring": ("ring", "donut", "hoop"),
    "bar": ("bar", "stick", "plank", "rod"),
}
# motion -> (progressive, simple present) phrase pairs
MOTION_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "bouncing": (("bouncing", "bounces"), ("bouncing up and down", "bounces up and down"),
                 ("hopping", "hops"), ("jumping", "jumps")),
    "sliding": (("sliding across", "slides across"), ("gliding along", "glides along"),
                ("moving sideways", "moves sideways"), ("sliding", "slides")),
    "spinning": (("spinning", "spins"), ("rotating", "rotates"),
                 ("turning around", "turns around"), ("twirling", "twirls")),
    "growing": (("growing", "grows"), ("getting bigger", "gets bigger"),
                ("expanding", "expands"), ("swelling up", "swells up")),
    "shrinking": (("shrinking", "shrinks"), ("getting smaller", "gets smaller"),
                  ("contracting", "contracts"), ("shrinking down", "shrinks down")),
    "orbiting": (("circling around", "circles around"), ("orbiting", "orbits"),
                 ("going round in circles", "goes round in circles"),
                 ("moving in a loop", "moves in a loop")),
    "shaking": (("shaking", "shakes"), ("wobbling", "wobbles"), ("jittering", "jitters"),
                ("vibrating", "vibrates")),
    "blinking": (("blinking", "blinks"), ("flashing", "flashes"), ("flickering", "flickers"),
                 ("blinking on and off", "blinks on and off")),
}
PRE = ("", "", "", "so", "okay", "now", "alright so", "and then", "um", "right", "next",
       "so basically", "okay now")
POST = ("", "", "", "", "right there", "like this", "for a bit", "on the screen", "again",
        "you see", "over here")
# {pre} {post} fillers; {col} colour, {shp} shape, {ing}/{s} motion (progressive/present)
TEMPLATES: tuple[str, ...] = (
    "{pre} the {col} {shp} is {ing} {post}",
    "{pre} watch the {col} {shp} {s} {post}",
    "{pre} here we have a {col} {shp} {ing}",
    "{pre} you can see the {shp} {ing} {post}",
    "{pre} now the {col} one is {ing}",
    "{pre} look at that {col} {shp} {ing} {post}",
    "{pre} next i take the {col} {shp} and it {s}",
    "{pre} the {shp} in {col} {s} {post}",
    "{pre} this {col} {shp} keeps {ing}",
    "{pre} see how it {s} {post} the {col} {shp}",
)
OFF_TOPIC: tuple[str, ...] = (
    "do not forget to like and subscribe",
    "i bought this kit last week at the store",
    "my cat keeps walking across the table",
    "the weather has been really nice today",
    "let me know in the comments what you think",
    "i will put the link in the description",
    "sorry about the noise in the background",
    "i need another cup of coffee",
    "this part always takes a while",
    "thanks for watching and see you next time",
    "my neighbour was mowing the lawn all morning",
    "we recorded this on a sunday afternoon",
    "hold on my phone is ringing",
    "the camera battery is almost empty",
    "i learned this from my grandmother",
    "check out my other videos too",
    "we are going on holiday next month",
    "my brother helped me with the editing",
    "this channel just passed ten thousand viewers",
    "the kids are making a lot of noise today",
)
EVENT_WORDS: frozenset[str] = frozenset(
    w
    for table in (COLOUR_WORDS, SHAPE_WORDS)
    for phrases in table.values()
    for phrase in phrases
    for w in phrase.split()
) | frozenset(
    w for pairs in MOTION_WORDS.values() for pair in pairs for phrase in pair
    for w in phrase.split()
    if w not in {"up", "and", "down", "across", "along", "around", "in", "a", "on", "off",
                 "round", "gets", "getting", "going", "goes"}
)


def _check_max_words(max_words: int) -> None:
    if max_words < 4:
        raise ValueError(f"max_words: expected at least 4, got {max_words}")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def describe(event: Event, rng: np.random.Generator, max_words: int = MAX_WORDS) -> str:
    """A narration of ``event``: a random template filled with random synonyms and fillers,
    redrawn until it has at most ``max_words`` words (lower-case, no punctuation).

    Example:
        >>> import numpy as np
        >>> from gradharmony.data.synthetic.events import Event
        >>> texts = {describe(Event("ring", "blue", "spinning", 2.0), np.random.default_rng(i))
        ...          for i in range(50)}
        >>> len(texts) > 20, all(len(t.split()) <= 16 for t in texts)
        (True, True)
    """
    _check_max_words(max_words)
    if event.colour not in COLOURS or event.shape not in SHAPES or event.motion not in MOTIONS:
        raise ValueError(f"describe: unknown event {event}")
    for _ in range(100):
        ing, s = _pick(rng, MOTION_WORDS[event.motion])
        text = _pick(rng, TEMPLATES).format(
            pre=_pick(rng, PRE),
            post=_pick(rng, POST),
            col=_pick(rng, COLOUR_WORDS[event.colour]),
            shp=_pick(rng, SHAPE_WORDS[event.shape]),
            ing=ing,
            s=s,
        )
        words = text.split()
        if len(words) <= max_words:
            return " ".join(words)
    # short form that always fits: "<shape> <motion>"
    return " ".join((SHAPE_WORDS[event.shape][0] + " " + event.motion).split()[:max_words])


def off_topic(rng: np.random.Generator, max_words: int = MAX_WORDS) -> str:
    """An off-topic narration (one or two asides joined by "and"), at most ``max_words`` words.

    Example:
        >>> import numpy as np
        >>> words = {w for i in range(200) for w in off_topic(np.random.default_rng(i)).split()}
        >>> words & EVENT_WORDS
        set()
    """
    _check_max_words(max_words)
    for _ in range(100):
        text = _pick(rng, OFF_TOPIC)
        if rng.uniform() < 0.3:
            text = f"{text} and {_pick(rng, OFF_TOPIC)}"
        text = f"{_pick(rng, PRE)} {text}"
        words = text.split()
        if len(words) <= max_words:
            return " ".join(words)
    return " ".join(OFF_TOPIC[-1].split()[:max_words])
