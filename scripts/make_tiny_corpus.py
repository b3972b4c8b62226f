"""Generate data/tiny_corpus.txt: a small, deterministic English-like corpus for the default config and tests.

The text is synthetic (templates filled from word lists with a seeded RNG), so it carries no licence questions
and a tiny model visibly learns its structure within a couple of CPU minutes. Run from the repo root:

    python scripts/make_tiny_corpus.py            # rewrites data/tiny_corpus.txt
    python scripts/make_tiny_corpus.py --check    # exit 1 if the shipped file differs from the generator
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

SEED = 20261124
PARAGRAPHS = 2400
OUT = Path(__file__).resolve().parent.parent / "data" / "tiny_corpus.txt"

NAMES = [
    "Ada",
    "Bruno",
    "Clara",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Keiko",
    "Lena",
    "Marco",
    "Nadia",
    "Oskar",
    "Priya",
    "Quentin",
    "Rosa",
    "Samir",
    "Tove",
]
ROLES = [
    "engineer",
    "baker",
    "pilot",
    "gardener",
    "teacher",
    "sailor",
    "painter",
    "doctor",
    "farmer",
    "writer",
]
PLACES = [
    "the harbour",
    "the old mill",
    "the market",
    "the library",
    "the hill",
    "the station",
    "the river",
    "the workshop",
    "the orchard",
    "the bridge",
    "the lighthouse",
    "the village square",
]
TIMES = [
    "at dawn",
    "in the morning",
    "at noon",
    "in the afternoon",
    "in the evening",
    "at night",
    "on Monday",
    "on a rainy day",
    "in early spring",
    "in late autumn",
]
OBJECTS = [
    "a lantern",
    "a map",
    "a basket of apples",
    "a broken clock",
    "a letter",
    "a wooden boat",
    "a bag of flour",
    "a red kite",
    "a set of tools",
    "a jar of honey",
    "an old book",
    "a warm coat",
]
ADJ = ["quiet", "busy", "cold", "bright", "windy", "crowded", "peaceful", "muddy", "sunny", "foggy"]
VERBS = [
    ("carried", "to"),
    ("found", "near"),
    ("repaired", "at"),
    ("painted", "beside"),
    ("sold", "at"),
    ("lost", "near"),
    ("hid", "behind"),
    ("brought", "to"),
]
FEELINGS = ["happy", "tired", "curious", "worried", "proud", "calm", "hungry", "surprised"]
WEATHER = [
    "It was raining.",
    "The sky was clear.",
    "A cold wind came from the sea.",
    "The sun was warm.",
    "Snow covered the roofs.",
    "The air smelled of salt.",
]


def sentence(rng: random.Random, who: str) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        verb, prep = rng.choice(VERBS)
        return f"{who} {verb} {rng.choice(OBJECTS)} {prep} {rng.choice(PLACES)} {rng.choice(TIMES)}."
    if kind == 1:
        return f"{rng.choice(PLACES).capitalize()} was {rng.choice(ADJ)} {rng.choice(TIMES)}."
    if kind == 2:
        return f"{who} felt {rng.choice(FEELINGS)} and walked to {rng.choice(PLACES)}."
    if kind == 3:
        other = rng.choice(NAMES)
        return f"{who} met {other}, the {rng.choice(ROLES)}, and they talked about {rng.choice(OBJECTS)}."
    if kind == 4:
        n = rng.randrange(2, 12)
        return f"{who} counted {n} boats, then {n + rng.randrange(1, 5)} boats, near {rng.choice(PLACES)}."
    if kind == 5:
        return rng.choice(WEATHER)
    return f'"Where is {rng.choice(OBJECTS)}?" asked {who}.'


def paragraph(rng: random.Random) -> str:
    who = rng.choice(NAMES)
    role = rng.choice(ROLES)
    article = "an" if role[0] in "aeiou" else "a"
    intro = f"{who} was {article} {role} who lived near {rng.choice(PLACES)}."
    return " ".join([intro] + [sentence(rng, who) for _ in range(rng.randrange(3, 8))])


def generate() -> str:
    rng = random.Random(SEED)
    return "\n\n".join(paragraph(rng) for _ in range(PARAGRAPHS)) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the shipped file instead of writing"
    )
    ns = parser.parse_args()
    text = generate()
    if ns.check:
        same = OUT.is_file() and OUT.read_text(encoding="utf-8") == text
        print("data/tiny_corpus.txt matches the generator" if same else "data/tiny_corpus.txt differs")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {OUT} ({len(text):,} characters, {PARAGRAPHS} paragraphs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
