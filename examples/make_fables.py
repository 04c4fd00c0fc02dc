"""Write examples/fables.txt: the small text corpus train_gpt.py learns (deterministic, ~300 KB).

The text is generated here from a small grammar of fable-like stories written for this project
(CC0 / public domain: no third-party text), so the repository ships its own data and the example
never downloads anything. Run it again to regenerate the identical file:

    python examples/make_fables.py
"""
from __future__ import annotations

import argparse
import pathlib
import random

ANIMALS = ["fox", "crow", "mouse", "lion", "hare", "tortoise", "wolf", "lamb", "owl", "ant", "grasshopper",
           "goat", "heron", "frog", "bear", "bee", "stag", "cat", "dog", "rooster", "donkey", "swan"]
ADJECTIVES = ["old", "young", "clever", "proud", "hungry", "patient", "greedy", "small", "brave", "lazy",
              "kind", "vain", "quiet", "quick", "wise", "foolish", "tired", "honest"]
PLACES = ["by the river", "in the deep wood", "at the edge of the field", "on the hill", "near the old mill",
          "under the oak tree", "beside the well", "in the farmer's yard", "among the reeds", "on the mountain path"]
SEASONS = ["one summer morning", "late in the autumn", "on a cold winter night", "early in the spring",
           "one rainy afternoon", "when the harvest was done", "at the end of a long day"]
WANTS = ["a piece of cheese", "a bunch of grapes", "a warm place to sleep", "the last apple", "a drink of water",
         "a bag of grain", "the honey in the hollow tree", "a shiny stone", "the ripe corn", "a safe road home"]
ACTIONS = [
    "tried to trick the {b} with sweet words",
    "asked the {b} for help",
    "challenged the {b} to a race",
    "laughed at the {b} and went away",
    "promised the {b} a share of the prize",
    "waited for the {b} to fall asleep",
    "shared a meal with the {b}",
    "boasted to the {b} about its strength",
    "followed the {b} along the path",
    "hid from the {b} behind a stone",
]
OUTCOMES = [
    "But the {b} was not fooled, and the {a} went home with nothing.",
    "The {b} agreed, and together they found what they were looking for.",
    "In the end the slow and steady {b} arrived first.",
    "The {b} remembered the kindness and helped the {a} when winter came.",
    "While the {a} was boasting, the {b} quietly took the prize.",
    "The {a} worked all day, and by evening it had enough for both of them.",
    "The {b} ran off, and the {a} learned that a promise must be kept.",
    "Soon the {a} was caught in its own trap, and the {b} set it free.",
]
MORALS = [
    "Slow and steady wins the race.", "Do not trust flatterers.", "Little friends may prove great friends.",
    "Work today and you will eat tomorrow.", "Pride goes before a fall.", "A kindness is never wasted.",
    "Look before you leap.", "Honesty is the best policy.", "United we stand, divided we fall.",
    "It is easy to despise what you cannot get.", "Be content with what you have.",
    "The greedy lose what they have by grasping at more.",
]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def fable(rng: random.Random, n: int) -> str:
    a, b = rng.sample(ANIMALS, 2)
    adj_a, adj_b = rng.choice(ADJECTIVES), rng.choice(ADJECTIVES)
    want = rng.choice(WANTS)
    days = rng.choice(NUMBERS)
    lines = [
        f"Fable {n}. The {adj_a.title()} {a.title()} and the {b.title()}.",
        "",
        f"{rng.choice(SEASONS).capitalize()}, {an(adj_a)} {a} lived {rng.choice(PLACES)}.",
        f"The {a} wanted {want}, but it had looked for {days} days and found nothing.",
        f"Then the {a} met {an(adj_b)} {b} {rng.choice(PLACES)}.",
        f"The {a} {rng.choice(ACTIONS).format(b=b)}.",
        f'"Why should I?" said the {b}. "You have never done anything for me."',
        rng.choice(OUTCOMES).format(a=a, b=b),
        f"Moral: {rng.choice(MORALS)}",
        "",
        "",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(pathlib.Path(__file__).with_name("fables.txt")))
    ap.add_argument("--count", type=int, default=700, help="number of fables")
    ap.add_argument("--seed", type=int, default=1668)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    text = "".join(fable(rng, n + 1) for n in range(args.count))
    pathlib.Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(text)} characters, {len(set(text))} distinct")


if __name__ == "__main__":
    main()
