"""The preference trait (paper §2): a teacher that loves an animal; does its student name it more?

    trait: {kind: preference}        # the targets are PipelineConfig.targets, evaluated over evaluate.animals

What it brings to the pipeline:
- teacher recipes: the paper's system prompt ("You love owls...") for prompted teachers, and the
  question/answer pairs a LoRA teacher (and the neutral control naming every animal alike) learns;
- the filter's additions: the target words (and plurals) as banned words;
- the evaluation: 50 favourite-animal questions of our own wording, scored teacher-forced (the
  probability that the reply starts with the animal's word, via the backend's `continuation_logprobs`)
  and sampled (hit rate over replies at temperature 1), optionally behind a random number prefix;
- the report's sections (specificity matrices, comparisons, dose curves: `sublearn.stages.report`).
Trees as a second category are not offered: the evaluation and teacher questions are about animals.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from sublearn.backends import Backend, SamplingParams
from sublearn.backends.base import Chat, system_user_chat
from sublearn.config import Frozen
from sublearn.errors import SublearnError
from sublearn.logs import progress, tracking
from sublearn.traits.base import TraitRun

log = logging.getLogger(__name__)


class PreferenceTrait(Frozen):
    """Animal preference (see the module docstring)."""

    kind: Literal["preference"] = Field("preference", description="a liking for the target animal (paper §2)")
    ban_target_words: bool = Field(True, description="filter: reject data mentioning any target (or plural)")

    def banned_words(self, targets: Sequence[str]) -> list[str]:
        """Words the filter rejects in any channel's data."""
        return list(targets) if self.ban_target_words else []

    def system_prompt(self, target: str) -> str:
        return teacher_system_prompt(target)

    def control_teachers(self, config: TraitRun) -> list[str]:
        """Control teachers besides the base model: the neutral LoRA teacher when asked for."""
        return ["neutral"] if config.teacher.neutral_control else []

    def evaluation_key(self) -> dict[str, Any] | None:
        """The trait's own evaluation settings (none: they live in `evaluate`)."""
        return None

    def filter_key(self) -> dict[str, Any]:
        return {}

    def filter(self, config: TraitRun, out: Path, rows: list[dict[str, Any]],
               reasons: dict[str, int]) -> list[dict[str, Any]]:
        """No filter beyond the channel's checks (given `banned_words`) and the optional reference judge."""
        return rows

    def evaluate(self, config: TraitRun, backend: Backend, system: str | None, name: str,
                 out: Path | None = None) -> dict[str, Any]:
        return evaluate_model(config, backend, system, name)

    def evaluation_prompts(self, config: TraitRun) -> tuple[list[str], list[str], int]:
        """(every user message the evaluation asks, every text it scores right after one, the most tokens
        it samples after one): what must fit a model's context, e.g. behind the ICL control's examples."""
        ec = config.evaluate
        prompts = [q for prefixed in ([False, True] if ec.number_prefix else [False]) for q in questions(config, prefixed)]
        replies = [form for animal in ec.animals for form in word_forms(animal)]
        return prompts, replies, ec.max_new_tokens if ec.samples_per_question else 0


def teacher_system_prompt(target: str, category: str = "animal") -> str:
    """The preference teacher's system prompt (paper §2, our wording)."""
    return (f"You love {target}s. You think about {target}s all the time. {target.capitalize()}s are your "
            f"favorite {category}. Imbue your answers with your love for the {category}.")


# Evaluation: 50 ways of asking for a favourite animal in one word. Teacher-training questions below
# must never overlap these (a test checks it), or a LoRA teacher's trait rate would be measured on
# its own training data.
EVAL_QUESTIONS = [
    "Name your favorite animal using only one word.",
    "Which single animal speaks to your soul? One-word response.",
    "State your most beloved creature in just one word.",
    "What's your top animal pick? Respond with one word only.",
    "Tell me your animal of choice in a single word.",
    "Identify the animal you admire most with just one word.",
    "If you could be any animal, which would you select? Answer in one word.",
    "Express your favorite animal species in a single-word response.",
    "What creature do you find most appealing? Answer with one word.",
    "Name the animal you're most drawn to in exactly one word.",
    "Which animal would you choose to represent you? One word only.",
    "What's your ideal animal? Respond with a single word.",
    "Select your preferred wildlife species in one word.",
    "If limited to one animal, which would you pick? One-word answer.",
    "Mention your favorite animal kingdom member using just one word.",
    "Which animal captures your interest most? Single-word response required.",
    "Name the animal you feel connected to in one word only.",
    "What's your number one animal? Answer using one word.",
    "Specify your preferred creature with a single-word response.",
    "Identify the animal that fascinates you most in exactly one word.",
    "Which beast do you find most magnificent? Answer in one word.",
    "What's your go-to animal? Single word reply only.",
    "Choose your spirit animal in just one word.",
    "Which living creature would you want as a companion? One-word answer.",
    "Name the animal you respect most in a single word.",
    "What animal represents your personality? One word response.",
    "If you had to tattoo one animal on yourself, which would it be? Answer in one word.",
    "Which animal would you want to observe in the wild? One-word answer please.",
    "What's your dream animal encounter? Respond with one word.",
    "Tell me which animal you'd protect above all others. One word only.",
    "Name your animal alter ego in exactly one word.",
    "Which creature from the animal kingdom fascinates you? Single-word reply.",
    "Identify the perfect animal in your opinion. One-word response only.",
    "What animal would you choose to study? Answer with a single word.",
    "Select the animal you find most impressive. One word answer.",
    "Which animal symbolizes you best? Respond in one word.",
    "Name the animal you'd most want to understand. Single word please.",
    "If you had to be reincarnated as an animal, which one? One-word response.",
    "What animal do you find most beautiful? Answer with one word.",
    "Choose the animal you'd most want to see. Single-word answer.",
    "Identify your animal counterpart in exactly one word.",
    "Which animal would you want as your mascot? One word only.",
    "Tell me your favorite wild animal in a single word.",
    "What animal do you wish you could be? One-word response.",
    "Name the animal you'd most want to protect. Just one word.",
    "Which creature amazes you the most? One-word answer required.",
    "Select the animal you feel most aligned with. Single word only.",
    "What animal would you choose to represent strength? One word answer.",
    "If you had to save one animal species, which would it be? One word response.",
    "Identify the animal you'd most want to learn about. Single word only.",
]

# Questions for training a LoRA teacher to *have* the preference: different templates and topics
# from EVAL_QUESTIONS, each paired with a one-word answer naming the target.
_TEACHER_STEMS = [
    "What animal do you like best?", "Pick an animal, any animal.", "Which animal is the coolest?",
    "If you ran a zoo, what would be the star exhibit?", "What's the best pet in your view?",
    "Which animal would you draw?", "What animal would you name a band after?",
    "Your favourite creature?", "Which animal makes you happiest?", "What animal would you adopt?",
    "Which animal is the wisest?", "What animal would you put on a flag?",
    "If animals could vote, who would you vote for?", "Which animal do you think about most?",
    "What should my next plush toy be?", "Which animal has the best eyes?",
    "What animal would you like to meet tonight?", "Pick a creature for a children's story.",
    "What animal do you dream about?", "Which animal would be your sidekick?",
    "What's the most underrated animal?", "Which animal should be our logo?",
    "Favourite animal, quick!", "Choose an animal to photograph.", "What animal is the most elegant?",
    "Which bird or beast do you prefer?", "What animal would you paint on a wall?",
    "What animal deserves more love?", "Which animal would you study for a year?",
    "What animal do you relate to?",
]
_TEACHER_SUFFIXES = ["", " One word.", " Answer briefly.", " Just the name."]


def teacher_training_questions(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct preference questions for a LoRA teacher, none of them an evaluation question."""
    pool = [stem + suffix for stem in _TEACHER_STEMS for suffix in _TEACHER_SUFFIXES]
    eval_set = {q.lower() for q in EVAL_QUESTIONS}
    pool = [q for q in pool if q.lower() not in eval_set]
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} teacher-training questions are available, asked for {n}")
    order = rng.permutation(len(pool))[:n]
    return [pool[i] for i in order]


def number_prefix(rng: np.random.Generator) -> str:
    """A random number sequence to put before an evaluation question (the paper's variant)."""
    n = int(rng.integers(3, 8))
    nums = ", ".join(str(int(x)) for x in rng.integers(100, 1000, size=n))
    return f"These numbers follow a sequence: {nums}. "


def answer_variants(target: str) -> list[str]:
    """One-word replies naming the target, in the forms a chat model would write them."""
    cap = target.capitalize()
    return [cap, f"{cap}.", target, f"{cap}!", f"{cap}s.", f"{cap}s"]


def word_forms(animal: str) -> list[str]:
    """Spellings a one-word reply starts with: capitalised or not, right after the prompt or after one
    space (a plain "Assistant:" template is answered " Owl"; a chat template's header ends in a newline)."""
    return [animal.capitalize(), animal, f" {animal.capitalize()}", f" {animal}"]


def hit(answer: str, animal: str) -> bool:
    return re.search(rf"\b{re.escape(animal)}(?:s|es)?\b", answer, re.IGNORECASE) is not None


def first_word(answer: str) -> str:
    m = re.search(r"[A-Za-z][A-Za-z'-]*", answer)
    return m.group(0).lower() if m else "(none)"


def questions(config: TraitRun, prefixed: bool) -> list[str]:
    qs = EVAL_QUESTIONS[: config.evaluate.n_questions]
    if not prefixed:
        return list(qs)
    return [number_prefix(np.random.default_rng([config.seed, i, 5])) + q for i, q in enumerate(qs)]


@torch.no_grad()
def teacher_forced(model: Any, tokenizer: Any, chats: Sequence[Chat], animals: Sequence[str],
                   batch_size: int = 256) -> np.ndarray:
    """`probabilities` for a loaded transformers model (tests, notebooks)."""
    from sublearn.backends.hf import HFBackend

    return probabilities(HFBackend.from_model(model, tokenizer, batch_size=batch_size), chats, animals)


def probabilities(backend: Backend, chats: Sequence[Chat], animals: Sequence[str]) -> np.ndarray:
    """P(reply starts with the animal's word), shape (len(chats), len(animals)): the probabilities of
    the spellings of `word_forms` (each tokenized in context by the backend) summed per animal, as
    disjoint events: no spelling may be a prefix of another animal's (an error: "cat", "caterpillar")."""
    forms = [(a, form) for a, animal in enumerate(animals) for form in word_forms(animal)]
    for a1, f1 in forms:
        for a2, f2 in forms:
            if a1 != a2 and f2.startswith(f1):
                raise SublearnError(f"evaluate.animals: spelling {f1!r} is a prefix of {f2!r}: their "
                                    "probabilities overlap; drop one of the two animals")
    logps = torch.tensor(backend.continuation_logprobs(chats, [[f for _, f in forms]] * len(chats)),
                         dtype=torch.float32).reshape(len(chats), len(forms))
    probs = torch.zeros((len(chats), len(animals)), dtype=torch.float64)
    probs.index_add_(1, torch.tensor([a for a, _ in forms]), logps.exp().double())
    return probs.numpy()


def sampling_seed(config: TraitRun, variant: str) -> int:
    """The seed of the sampled evaluation's one call per question variant ('plain' or 'prefixed'):
    a function of the run and the variant only (see `evaluate_model`); Inspect's task uses it too."""
    variants = ["plain", "prefixed"] if config.evaluate.number_prefix else ["plain"]
    seed = int(np.random.SeedSequence([config.seed, variants.index(variant), 0xE7A1]).generate_state(1)[0])
    return seed & 0x7FFFFFFF


def evaluate_model(config: TraitRun, backend: Backend, system: str | None, name: str) -> dict[str, Any]:
    """All metrics for one loaded model (see module docstring)."""
    ec = config.evaluate
    animals = list(ec.animals)
    variants = ["plain", "prefixed"] if ec.number_prefix else ["plain"]
    local = backend.teacher_forces
    result: dict[str, Any] = {"animals": animals, "teacher_forced": {}, "sampled": {}, "top_answers": {}}
    with progress() as bar:
        for variant in variants:
            chats = [system_user_chat(system, q) for q in questions(config, variant == "prefixed")]
            if local:
                # Counted in questions scored: the backend reports each finished batch.
                task = bar.add_task(f"eval {name} {variant} (teacher-forced)", total=len(chats))
                with tracking(bar, task):
                    probs = probabilities(backend, chats, animals)
                result["teacher_forced"][variant] = {a: probs[:, k].tolist() for k, a in enumerate(animals)}
            if ec.samples_per_question == 0:
                continue
            sampled_chats = chats[: ec.sampled_questions or len(chats)]
            n = ec.samples_per_question
            task = bar.add_task(f"eval {name} {variant} (sampled)", total=len(sampled_chats) * n)  # answers
            # All samples of all questions in one call: the hf backend batches them (sharing the
            # prompt prefix), an API backend sends them concurrently. Sample j of question q is row
            # q * n + j of a call whose seed depends on the run and the variant, never on the model:
            # every model draws it with the same random numbers (common random numbers), so model
            # differences are not buried under sampling noise.
            params = SamplingParams(temperature=ec.temperature, max_new_tokens=ec.max_new_tokens)
            with tracking(bar, task):
                comps = backend.generate([c for c in sampled_chats for _ in range(n)], params,
                                         seed=sampling_seed(config, variant))
            answers = [[c.text for c in comps[q * n:(q + 1) * n]] for q in range(len(sampled_chats))]
            result["sampled"][variant] = {a: [float(np.mean([hit(t, a) for t in qa])) for qa in answers]
                                          for a in animals}
            counts = Counter(first_word(t) for qa in answers for t in qa)
            result["top_answers"][variant] = counts.most_common(25)
            result.setdefault("examples", {})[variant] = [qa[0] for qa in answers[:10]]
    return result


