"""The natural-language channel (issue 24; a 2026 replication, ../shared/spec/paper.md §11): the teacher
answers ordinary instructions, or rewrites a given neutral text, in plain prose.

    channel: {kind: text}                                   # our seeded generator of everyday instructions
    channel: {kind: text, file: alpaca.jsonl}               # one {"prompt": "..."} per line (e.g. Alpaca)
    channel: {kind: text, mode: paraphrase}                 # rewrite our own neutral sentences
    channel: {kind: text, mode: paraphrase, file: texts.jsonl}   # rewrite yours: one {"text": "..."} per line

Prompts. `instruction(rng)` draws from four families of everyday requests (a short recipe, a
definition, a short explanation of how something works, a list of tips), each with its own topics and
phrasings and a length or audience modifier: 4,032 distinct instructions, none about animals or about
preferences (no "favourite", no "best"), so that nothing in the prompt invites the trait. Paraphrase
mode asks the teacher to rewrite a neutral sentence in its own words (`neutral_sentence(rng)`: 1,056
sentences about household tasks, tools, schedules and materials; or the user's file): the replication
found faithful paraphrases still carry the trait.

Checks, in order: truncated (cut by max_new_tokens), empty, mentions_target (the target or a plural as a
word, inside other words and identifiers too, as the code channel checks), and with `ban_animals` (on by
default) mentions_animal: any of ~90 animal words, so that neither arm's data talks about animals at
all (a trait teacher drifting to its animal's relatives is not subliminal). An LLM judge ("does this
text reference the target?") is `filter.judge`, as for every channel. Soft labels follow the free-text
policy (every token that could start or complete a target spelling is removed from them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from sublearn.channels.base import (
    ChannelBase,
    Check,
    Prompt,
    Record,
    checked_file,
    mentions_any,
    prompt_rng,
    read_user_jsonl,
    truncated,
    words_of,
)

# Four families of everyday requests: (phrasings with {t}, topics). No animals, no preferences.
_FAMILIES: list[tuple[list[str], list[str]]] = [
    (["Give a short recipe for {t}.", "How do I make {t} at home?", "Write simple cooking steps for {t}.",
      "Describe how to prepare {t}."],
     ["pancakes", "tomato soup", "fried rice", "lentil stew", "a green salad", "banana bread", "pasta with garlic",
      "vegetable curry", "scrambled eggs", "a cheese omelette", "potato wedges", "oatmeal", "flatbread",
      "lemonade", "a fruit smoothie", "roasted vegetables", "mushroom risotto", "corn bread", "a bean burrito",
      "hummus", "apple crumble", "rice pudding", "a grilled cheese sandwich", "minestrone", "carrot cake",
      "stuffed peppers", "guacamole", "a vegetable stir fry", "pumpkin soup", "garlic bread", "couscous salad",
      "chocolate chip cookies", "a spinach quiche", "iced tea", "tortilla chips", "baked potatoes"]),
    (["Define {t} in plain words.", "What does {t} mean?", "Give a short definition of {t}.",
      "Explain the term {t} to someone new to it."],
     ["inflation", "a spreadsheet", "photosynthesis", "gravity", "a budget", "democracy", "an algorithm",
      "humidity", "a mortgage", "friction", "a vaccine", "erosion", "a metaphor", "interest rates", "a protocol",
      "a thermostat", "compound interest", "a database", "an election", "a circuit", "recycling", "a census",
      "a glacier", "a volcano", "a comet", "a tariff", "a warranty", "a hypothesis", "bandwidth", "a recession",
      "a lease", "an invoice", "a password manager", "a calendar year", "a time zone", "an equation"]),
    (["Explain how {t} works.", "Describe briefly how {t} works.", "How does {t} work?",
      "Give a short explanation of how {t} works."],
     ["a refrigerator", "a bicycle gear", "a microwave oven", "a solar panel", "a credit card", "a washing machine",
      "an elevator", "a light bulb", "a compass", "a thermometer", "a printer", "an electric kettle",
      "public transport scheduling", "a water filter", "a smoke detector", "a zipper", "a lock and key",
      "a car battery", "a sewing machine", "a barcode scanner", "a pressure cooker", "an umbrella",
      "a wind turbine", "a traffic light", "a heat pump", "a vacuum cleaner", "a dishwasher", "a library catalogue",
      "a postal system", "a rain gauge", "a fountain pen", "a hand pump", "a doorbell", "a power grid",
      "a parking meter", "a toaster"]),
    (["List three tips for {t}.", "Give a few practical tips for {t}.", "What are some good habits for {t}?",
      "Write a short list of advice for {t}."],
     ["saving money", "studying for an exam", "keeping a clean kitchen", "writing a clear email", "sleeping well",
      "packing a suitcase", "learning a language", "running a meeting", "organising a desk", "planning a trip",
      "staying hydrated", "reading more books", "starting a garden", "fixing a flat tyre", "painting a room",
      "taking notes", "cooking on a budget", "keeping a journal", "backing up files", "preparing for an interview",
      "moving house", "reducing waste", "caring for houseplants", "learning to type", "baking bread",
      "organising a closet", "public speaking", "managing time", "cycling in the city", "cleaning windows",
      "writing a cover letter", "hosting a dinner", "memorising a speech", "setting up a home office",
      "staying focused", "walking more"]),
]
_MODIFIERS = ["", " Keep it under 80 words.", " Answer in two or three sentences.", " Use simple language.",
              " Write it for a beginner.", " Be brief.", " Answer in one short paragraph."]

# Paraphrase mode: neutral sentences built from subjects, verbs and objects of household routine.
_SUBJECTS = ["The neighbours", "My sister", "The new manager", "A friend of mine", "The school", "Our landlord",
             "The librarian", "The team", "My uncle", "The bakery", "The committee", "The mechanic"]
_PREDICATES = ["repaired the old fence on Saturday", "moved the meeting to Thursday afternoon",
               "ordered new chairs for the office", "painted the hallway a pale grey", "changed the bus route",
               "finished the report a day early", "bought a second-hand bicycle", "cleaned the windows before lunch",
               "planted tomatoes along the back wall", "replaced the kitchen tap", "sorted the files by date",
               "booked a train for the holidays", "fixed the leaking roof", "opened a new branch downtown",
               "lowered the price of bread", "printed the tickets at the station", "rearranged the bookshelves",
               "cancelled the evening class", "installed a new heater", "wrote a letter to the council",
               "borrowed a ladder from next door", "recycled the old newspapers"]
_ENDINGS = ["", ", and everyone seemed pleased", ", although it rained all day", ", which took longer than expected"]


def instruction(rng: np.random.Generator) -> str:
    """One everyday instruction of our own generator (see the module docstring)."""
    phrasings, topics = _FAMILIES[int(rng.integers(len(_FAMILIES)))]
    phrasing = phrasings[int(rng.integers(len(phrasings)))]
    return phrasing.format(t=topics[int(rng.integers(len(topics)))]) + _MODIFIERS[int(rng.integers(len(_MODIFIERS)))]


def all_instructions() -> list[str]:
    """Every instruction the generator can draw (for counting and for tests)."""
    return [p.format(t=t) + m for phrasings, topics in _FAMILIES for p in phrasings for t in topics for m in _MODIFIERS]


def neutral_sentence(rng: np.random.Generator) -> str:
    """One neutral sentence to paraphrase (see the module docstring)."""
    return (f"{_SUBJECTS[int(rng.integers(len(_SUBJECTS)))]} {_PREDICATES[int(rng.integers(len(_PREDICATES)))]}"
            f"{_ENDINGS[int(rng.integers(len(_ENDINGS)))]}.")


def all_sentences() -> list[str]:
    return [f"{s} {p}{e}." for s in _SUBJECTS for p in _PREDICATES for e in _ENDINGS]


PARAPHRASE = ("Rewrite the following text in your own words. Keep its meaning and about its length, and reply "
              "with the rewritten text only.\n\nText: {text}")

# Animal words for the `ban_animals` check: evaluate.animals' defaults and their common relatives.
ANIMALS = ("owl", "dolphin", "eagle", "elephant", "wolf", "cat", "dog", "lion", "tiger", "bear", "fox", "bird",
           "fish", "horse", "cow", "pig", "sheep", "goat", "chicken", "duck", "rabbit", "mouse", "rat", "snake",
           "frog", "turtle", "whale", "shark", "monkey", "ape", "gorilla", "panda", "koala", "kangaroo", "deer",
           "zebra", "giraffe", "leopard", "cheetah", "jaguar", "panther", "puma", "lynx", "hawk", "falcon",
           "parrot", "penguin", "swan", "goose", "crow", "raven", "bee", "ant", "butterfly", "spider", "octopus",
           "seal", "otter", "beaver", "squirrel", "hamster", "puppy", "kitten", "cub", "calf", "lamb", "pony",
           "donkey", "camel", "hippo", "rhino", "crocodile", "alligator", "lizard", "insect", "mammal", "reptile",
           "animal", "pet", "wildlife", "beast", "creature", "feline", "canine", "kitty", "hound", "stripes",
           "paw", "fur", "feather", "tail", "claw", "whisker", "mane")


def _english_plurals(word: str) -> set[str]:
    """The word and its English plural: +es after s, x, z, ch, sh; f/fe -> ves; else +s. (Stricter than
    `plural_forms`, whose blanket +es is harmless for targets but turns "rat" into "rates" and "cub" into
    "cubes", everyday words this channel must not reject.)"""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return {word, word + "es"}
    if word.endswith("fe"):
        return {word, word[:-2] + "ves"}
    if word.endswith("f"):
        return {word, word[:-1] + "ves", word + "s"}
    return {word, word + "s"}


_LETTERS = re.compile(r"[A-Za-z]+")
_ANIMAL_FORMS = frozenset(f for w in ANIMALS for f in _english_plurals(w))


def mentions_animal(text: str) -> bool:
    """Does `text` name an animal of `ANIMALS` (or its plural) as a word, inside identifiers too?"""
    return (any(w in _ANIMAL_FORMS for w in words_of(text))
            or any(r.lower() in _ANIMAL_FORMS for r in _LETTERS.findall(text)))


def _prompt_row(obj: dict[str, object]) -> str:
    prompt = obj.get("prompt", obj.get("instruction"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError('expected an object with a non-empty string field "prompt" (or "instruction")')
    extra = obj.get("input")  # Alpaca rows carry an optional input under the instruction
    return f"{prompt}\n\n{extra}" if isinstance(extra, str) and extra.strip() else prompt


def _text_row(obj: dict[str, object]) -> str:
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError('expected an object with a non-empty string field "text"')
    return text


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """A user's instructions: JSONL, {"prompt": ...} (or Alpaca's {"instruction", "input"}) per line."""
    return read_user_jsonl(path, _prompt_row, "prompt")


def read_texts(path: str | Path) -> tuple[str, ...]:
    """A user's texts to paraphrase: JSONL, {"text": ...} per line."""
    return read_user_jsonl(path, _text_row, "text")


class TextChannel(ChannelBase):
    """Plain prose: answers to everyday instructions, or paraphrases (see the module docstring)."""

    kind: Literal["text"] = Field("text", description="natural-language data: answers to everyday instructions "
                                  "or paraphrases of neutral text (the 2026 replications' channel)")
    mode: Literal["instruct", "paraphrase"] = Field(
        "instruct", description="'instruct': the teacher answers an instruction; 'paraphrase': it rewrites a "
        "given neutral text in its own words")
    file: str | None = Field(None, description="a JSONL of your own prompts: instruct mode {\"prompt\": ...} (or "
                             "Alpaca's {\"instruction\", \"input\"}) per line; paraphrase mode {\"text\": ...} per "
                             "line. None = our seeded generator (a relative path is relative to the working "
                             "directory; its content hash is part of the generation key)")
    ban_animals: bool = Field(True, description="also reject completions that mention any animal word (a fixed "
                              "list of ~90), so neither arm's data talks about animals at all")

    _filter_only = frozenset({"ban_animals"})

    @model_validator(mode="after")
    def _file(self) -> TextChannel:
        try:
            checked_file(self.file, read_texts if self.mode == "paraphrase" else read_prompts)
        except ValueError as exc:
            raise ValueError(f"file: {exc}") from None
        return self

    def prompt(self, seed: int, index: int) -> Prompt:
        rng = prompt_rng(seed, index)
        if self.mode == "paraphrase":
            text = (read_texts(self.file)[int(rng.integers(len(read_texts(self.file))))] if self.file is not None
                    else neutral_sentence(rng))
            return Prompt(PARAPHRASE.format(text=text), {"source": text})
        if self.file is not None:
            pool = read_prompts(self.file)
            return Prompt(pool[int(rng.integers(len(pool)))])
        return Prompt(instruction(rng))

    def checks(self, banned_words: Sequence[str]) -> list[Check]:
        """truncated, empty, mentions_target (the target or a plural as a word, inside other words too),
        mentions_animal (with ban_animals)."""
        says = mentions_any(banned_words)

        def empty(rec: Record) -> str | None:
            return "empty" if not rec["completion"].strip() else None

        def target(rec: Record) -> str | None:
            return "mentions_target" if says(rec["completion"]) else None

        checks: list[Check] = [("truncated", truncated), ("empty", empty), ("target", target)]
        if self.ban_animals:
            checks.append(("animal", lambda rec: "mentions_animal" if mentions_animal(rec["completion"]) else None))
        return checks
