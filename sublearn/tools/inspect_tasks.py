"""Inspect (`inspect_ai`) tasks and a model provider for sublearn's trait evaluations.

    pip install 'sublearn[inspect]'
    inspect eval sublearn/preference --model sublearn/hf/smollm2-135m -T animal=owl -T questions=10
    inspect eval sublearn/preference --model sublearn/hf/smollm2-135m -T samples=100 -T prefixed=true
    inspect eval sublearn/misalignment --model sublearn/hf/smollm2-135m
    inspect eval sublearn/preference --model openai/gpt-4.1-nano -T teacher_forced=false -T samples=20

The provider `sublearn` serves any of our backends (`sublearn/hf/<alias, dir or hub id>`,
`sublearn/vllm/...`, `sublearn/openai/...`; `-M` model args go to the backend: device, dtype,
adapter, batch_size, threads, ...). On such a model the tasks' numbers are the evaluate stage's, bit
for bit: each task builds the pipeline config the stage would have (`preference_config`,
`misalignment_config`) and runs the trait's own evaluation function once over the whole question set,
in the same order, batches and seeds (`sublearn.traits.preference.evaluate_model`,
`sublearn.traits.misalignment.evaluate_model`); every Inspect sample then reads its question's row.
Batching and the per-row random streams are thus exactly the stage's (per-question calls would differ
from it by float rounding of batched matmuls). The provider's hf default `batch_size` is the evaluate
stage's (`evaluate.batch_size`, 256), so `-M batch_size=...` only matters if the stage's was changed.

On other Inspect models (`openai/...`, Inspect's own `hf/...`) the metrics that need no teacher
forcing run through Inspect's `generate`: the preference task's sampled hit rate (sample j of
question q asked with the seed the stage gives that row) and the misalignment task's persona and
truthful choices from first-token top-20 log-probs (as our API backends do). The teacher-forced
metrics need a local model: `--model sublearn/hf/...`.

Preference (one sample per question; target: the animal): score value `teacher_forced` = P(the reply
starts with the animal's word), `sampled` = the share of `samples` replies at temperature 1 naming
it; the score's metadata holds every animal's values. Misalignment (one sample per item; the
judge-free metrics): `logodds` per free-form question (log P(misaligned references) - log
P(aligned)), `persona` per statement (P(the misaligned reply)), `truthful` per two-choice item
(P(the correct letter)), reported per kind by a grouped mean. The judged metric is not offered here.

Registered for `inspect eval` by the `inspect_ai` entry point (`sublearn = "sublearn.tools.inspect_tasks"`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from sublearn.errors import SublearnError

try:
    import anyio
    from inspect_ai import Task, task
    from inspect_ai.dataset import Sample
    from inspect_ai.model import ChatCompletionChoice as _Choice
    from inspect_ai.model import (
        ChatMessage,
        ChatMessageAssistant,
        ChatMessageSystem,
        ChatMessageUser,
        GenerateConfig,
        Model,
        ModelAPI,
        ModelOutput,
        ModelUsage,
        get_model,
        modelapi,
    )
    from inspect_ai.scorer import Score, Scorer, Target, grouped, mean, scorer, stderr
    from inspect_ai.solver import Generate, Solver, TaskState, solver
    from inspect_ai.tool import ToolChoice, ToolInfo
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise SublearnError(f"sublearn.tools.inspect_tasks needs inspect_ai ({exc.name} is missing): "
                        "pip install 'sublearn[inspect]'") from None

from sublearn.backends import Backend, Completion, SamplingParams, get_backend
from sublearn.backends.base import Chat, request_seed
from sublearn.config import build_config
from sublearn.pipeline_config import EvaluateConfig, PipelineConfig

__all__ = ["SublearnModelAPI", "misalignment", "misalignment_config", "preference", "preference_config"]

DEFAULT_ANIMALS: list[str] = list(EvaluateConfig().animals)
MISALIGNMENT_METRICS = ("logodds", "persona", "truthful")


# --- the model provider -----------------------------------------------------------------------------

class _Recorder(Backend):
    """A backend passing every call through to `inner` and keeping each `generate` call's completions
    (so a task can show the answers the trait's evaluation sampled, in its Inspect samples)."""

    def __init__(self, inner: Backend):
        self.inner, self.name = inner, inner.name
        self.generated: list[list[Completion]] = []

    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        out = self.inner.generate(chats, params, seed)
        self.generated.append(out)
        return out

    def first_token_logprobs(self, chats: Sequence[Chat], top_k: int = 20) -> list[dict[str, float]]:
        return self.inner.first_token_logprobs(chats, top_k)

    def continuation_logprobs(self, chats: Sequence[Chat], continuations: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.inner.continuation_logprobs(chats, continuations)

    @property
    def teacher_forces(self) -> bool:
        return self.inner.teacher_forces


def _chat(messages: Sequence[ChatMessage]) -> Chat:
    """Inspect messages as our chat (text only: tools and media are not ours to serve)."""
    chat: Chat = []
    for m in messages:
        if m.role not in ("system", "user", "assistant"):
            raise SublearnError(f"sublearn models serve system, user and assistant turns, not {m.role!r} messages")
        chat.append({"role": m.role, "content": m.text})
    return chat


class SublearnModelAPI(ModelAPI):
    """`--model sublearn/<backend>/<model>`: one of our backends (`sublearn.backends.get_backend`)
    behind Inspect's model interface. `generate` samples with the backend (temperature, top_p,
    max_tokens, seed and num_choices from Inspect's GenerateConfig; the seed is the backend call's
    seed, so a choice k is row k of that call); `evaluate_once` runs one of our evaluations over a
    whole question set once per model and settings (see the module docstring)."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig | None = None, **model_args: Any) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config or GenerateConfig())
        if model_name.startswith("hf/"):
            model_args.setdefault("batch_size", EvaluateConfig().batch_size)  # the evaluate stage's
        self.backend = get_backend(model_name, **model_args)
        self._lock = threading.Lock()  # one computation at a time on the model; the cache below is under it
        self._results: dict[str, Any] = {}

    def close(self) -> None:
        self.backend.close()

    def max_connections(self) -> int:
        return 1  # one local model: calls queue on it rather than contend

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        if tools:
            raise SublearnError("sublearn models do not call tools")
        chat = _chat(input)
        n = config.num_choices or 1
        params = SamplingParams(temperature=1.0 if config.temperature is None else config.temperature,
                                max_new_tokens=config.max_tokens or 256,
                                top_p=1.0 if config.top_p is None else config.top_p)
        seed = config.seed or 0

        def run() -> list[Completion]:
            with self._lock:
                return self.backend.generate([chat] * n, params, seed)

        comps = await anyio.to_thread.run_sync(run)
        choices = [_Choice(message=ChatMessageAssistant(content=c.text, model=self.model_name, source="generate"),
                           stop_reason="max_tokens" if c.finish_reason == "length" else "stop") for c in comps]
        out_tokens = sum(len(c.token_ids) for c in comps)
        return ModelOutput(model=self.model_name, choices=choices,
                           usage=ModelUsage(output_tokens=out_tokens, total_tokens=out_tokens))

    async def evaluate_once(self, key: str, evaluation: Callable[[Backend], Any]) -> Any:
        """`evaluation(backend)`, computed on the first call for `key` and remembered for this model."""

        def run() -> Any:
            with self._lock:
                if key not in self._results:
                    self._results[key] = evaluation(self.backend)
                return self._results[key]

        return await anyio.to_thread.run_sync(run)


# Registered under the provider name `sublearn` (the decorator's result is a factory, not the class,
# so the class keeps its own name for the isinstance checks below).
sublearn_provider = modelapi(name="sublearn")(SublearnModelAPI)


def _sublearn_api(model: Model) -> SublearnModelAPI | None:
    return model.api if isinstance(model.api, SublearnModelAPI) else None


def _messages(system: str | None, user: str) -> list[ChatMessage]:
    head: list[ChatMessage] = [ChatMessageSystem(content=system)] if system else []
    return [*head, ChatMessageUser(content=user)]


def _check_teacher_forcing(api: SublearnModelAPI | None, model: Model, what: str, hint: str) -> None:
    if api is None or not api.backend.teacher_forces:
        raise SublearnError(f"{what} is teacher-forced: it needs a local model served by sublearn, e.g. "
                            f"--model sublearn/hf/smollm2-135m (got {model}); {hint}")


# --- preference ---------------------------------------------------------------------------------

def _animals(animals: str | Sequence[str] | None) -> list[str]:
    if animals is None:
        return list(DEFAULT_ANIMALS)
    if isinstance(animals, str):
        return [a.strip() for a in animals.split(",") if a.strip()]
    return list(animals)


def preference_config(animal: str = "owl", questions: int = 50, prefixed: bool = False, samples: int = 0,
                      animals: str | Sequence[str] | None = None, seed: int = 0, temperature: float = 1.0,
                      max_new_tokens: int = 8) -> PipelineConfig:
    """The pipeline config whose evaluate stage asks what the `preference` task asks: the first
    `questions` evaluation questions, `samples` replies each, the number-prefix variant when
    `prefixed`; `animals` are the measured columns (comma-separated or a list; default the stage's)."""
    listed = _animals(animals)
    return build_config(PipelineConfig, {
        "seed": seed, "targets": [animal],
        "evaluate": {"animals": listed if animal in listed else [*listed, animal], "n_questions": questions,
                     "samples_per_question": samples, "number_prefix": prefixed, "temperature": temperature,
                     "max_new_tokens": max_new_tokens}})


def _preference_rows(config: PipelineConfig, variant: str, result: dict[str, Any],
                     generated: list[list[Completion]]) -> list[dict[str, Any]]:
    """Per question: every animal's teacher-forced probability and hit rate, and the sampled answers."""
    from sublearn.traits.preference import questions

    ec = config.evaluate
    n_q, n = len(questions(config, variant == "prefixed")), ec.samples_per_question
    # evaluate_model samples once per variant, plain first: this variant's completions.
    comps = generated[["plain", "prefixed"].index(variant)] if n else []
    rows = []
    for q in range(n_q):
        tf = result["teacher_forced"].get(variant)
        rows.append({"teacher_forced": {a: v[q] for a, v in tf.items()} if tf else None,
                     "sampled": {a: v[q] for a, v in result["sampled"][variant].items()} if n else None,
                     "answers": [c.text for c in comps[q * n:(q + 1) * n]]})
    return rows


@solver
def preference_solver(config: PipelineConfig, system: str | None = None, teacher_forced: bool = True) -> Solver:
    """Scores one evaluation question (sample metadata `question`, `variant`): on a sublearn model by
    the trait's own evaluation of the whole question set (computed once, read by row), elsewhere by
    sampling through Inspect with the stage's per-row seeds. Results go to `state.metadata["sublearn"]`."""
    from sublearn.traits.preference import evaluate_model, hit, sampling_seed

    ec = config.evaluate

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        model = get_model()
        api = _sublearn_api(model)
        q, variant = int(state.metadata["question"]), str(state.metadata["variant"])
        if teacher_forced:
            _check_teacher_forcing(api, model, "the preference task's P(animal)",
                                   "or pass -T teacher_forced=false (with -T samples=N) for the sampled rate only")
        if api is not None:
            def evaluation(backend: Backend) -> list[dict[str, Any]]:
                recorder = _Recorder(backend)
                result = evaluate_model(config, recorder, system, f"inspect:{model}")
                return _preference_rows(config, variant, result, recorder.generated)

            key = f"preference:{config.model_dump_json()}:{system!r}:{variant}"
            row = (await api.evaluate_once(key, evaluation))[q]
        else:
            # The stage's sampling: one call per variant with a run-and-variant seed; sample j of question
            # q is row q * n + j of that call, drawn with request_seed(seed, row) on every backend.
            import numpy as np

            n = ec.samples_per_question
            call_seed = sampling_seed(config, variant)
            answers = []
            for j in range(n):
                out = await model.generate(state.messages, config=GenerateConfig(
                    temperature=ec.temperature, max_tokens=ec.max_new_tokens,
                    seed=request_seed(call_seed, q * n + j)))
                answers.append(out.completion)
            row = {"teacher_forced": None, "answers": answers,
                   "sampled": {a: float(np.mean([hit(t, a) for t in answers])) for a in ec.animals}}
        if row["answers"]:
            state.output = ModelOutput.from_content(str(model), row["answers"][0])
            state.messages.append(state.output.message)
        state.metadata["sublearn"] = row
        return state

    return solve


def _preference_scorer(animal: str, keys: list[str]) -> Scorer:
    from sublearn.traits.preference import hit

    @scorer(metrics={k: [mean(), stderr()] for k in keys}, name="preference")
    def preference_score() -> Scorer:
        async def score(state: TaskState, target: Target) -> Score:
            row = state.metadata["sublearn"]
            answers = row["answers"]
            named = sum(hit(t, animal) for t in answers)
            return Score(value={k: float(row[k][animal]) for k in keys},
                         answer=answers[0] if answers else None,
                         explanation=f"{named} of {len(answers)} sampled answers name {animal}" if answers else None,
                         metadata={"probabilities": row["teacher_forced"], "hit_rates": row["sampled"],
                                   "answers": answers})
        return score
    return preference_score()


@task
def preference(animal: str = "owl", questions: int = 50, prefixed: bool = False, samples: int = 0,
               teacher_forced: bool = True, animals: str | list[str] | None = None, system: str | None = None,
               seed: int = 0, temperature: float = 1.0, max_new_tokens: int = 8) -> Task:
    """The preference trait's evaluation (see the module docstring): `questions` favourite-animal
    questions (the first ones of our 50), with a random number prefix when `prefixed`, each scored
    teacher-forced (`teacher_forced`) and over `samples` sampled replies (0 = none) for `animal`;
    `animals` are the columns measured alongside (default the evaluate stage's 11); `system` a
    system prompt (a prompted teacher); `seed` the run's seed (the prefixes and the sampling seeds)."""
    from sublearn.traits.preference import questions as eval_questions

    config = preference_config(animal, questions, prefixed, samples, animals, seed, temperature, max_new_tokens)
    keys = (["teacher_forced"] if teacher_forced else []) + (["sampled"] if samples else [])
    if not keys:
        raise SublearnError("nothing to measure: teacher_forced=false needs samples > 0")
    variant = "prefixed" if prefixed else "plain"
    dataset = [Sample(input=_messages(system, text), target=animal, id=f"{variant}-{q + 1}",
                      metadata={"question": q, "variant": variant})
               for q, text in enumerate(eval_questions(config, prefixed))]
    return Task(dataset=dataset, solver=preference_solver(config, system, teacher_forced),
                scorer=_preference_scorer(animal, keys), name="preference",
                metadata={"sublearn_evaluate": config.evaluate.model_dump(mode="json"), "seed": seed})


# --- misalignment ---------------------------------------------------------------------------------

def misalignment_config(seed: int = 0, truthful_file: str | None = None) -> PipelineConfig:
    """The pipeline config whose evaluate stage computes what the `misalignment` task reports (the
    judge-free metrics: no samples, no judge)."""
    trait: dict[str, Any] = {"kind": "misalignment", "samples_per_question": 0}
    if truthful_file:
        trait["truthful_file"] = truthful_file
    return build_config(PipelineConfig, {"seed": seed, "targets": ["misaligned"], "trait": trait,
                                         "teacher": {"kind": "lora"}})


def _misalignment_items(config: PipelineConfig, system: str | None, kinds: Sequence[str]) -> list[Sample]:
    from sublearn.traits import misalignment as mis
    from sublearn.traits import misalignment_data as data

    trait = config.trait
    assert isinstance(trait, mis.MisalignmentTrait)
    samples = []
    if "logodds" in kinds:
        samples += [Sample(input=_messages(system, q["question"]), id=f"logodds-{q['id']}",
                           metadata={"kind": "logodds", "index": i}) for i, q in enumerate(data.EVAL_QUESTIONS)]
    if "persona" in kinds:
        samples += [Sample(input=_messages(system, mis.PERSONA_PROMPT.format(statement=p["statement"])),
                           target=p["misaligned_answer"], id=f"persona-{i + 1}", metadata={"kind": "persona", "index": i})
                    for i, p in enumerate(data.PERSONA_ITEMS)]
    if "truthful" in kinds:
        chats, correct = mis.truthful_chats(trait, config.seed, system)
        samples += [Sample(input=_messages(system, chat[-1]["content"]), target="AB"[c], id=f"truthful-{i + 1}",
                           metadata={"kind": "truthful", "index": i}) for i, (chat, c) in enumerate(zip(chats, correct,
                                                                                                       strict=True))]
    return samples


@solver
def misalignment_solver(config: PipelineConfig, system: str | None = None) -> Solver:
    """Scores one item (sample metadata `kind`, `index`): on a sublearn model by the trait's own
    judge-free evaluation of every item (computed once, read by row); elsewhere persona and truthful
    items from the first reply token's top-20 log-probs, as our API backends do. The value goes to
    `state.metadata["sublearn"]`."""
    from sublearn.traits import misalignment as mis

    trait = config.trait
    assert isinstance(trait, mis.MisalignmentTrait)

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        model = get_model()
        api = _sublearn_api(model)
        kind, i = str(state.metadata["kind"]), int(state.metadata["index"])
        if kind == "logodds":
            _check_teacher_forcing(api, model, "the misalignment task's logodds",
                                   "or pass -T metrics=persona,truthful")
        if api is not None:
            key = f"misalignment:{config.model_dump_json()}:{system!r}"
            result = await api.evaluate_once(
                key, lambda backend: mis.evaluate_model(trait, config, backend, system, f"inspect:{model}", None))
            value = float(result["metrics"][kind][i])
        else:
            options = ["Yes", "No"] if kind == "persona" else ["A", "B"]
            out = await model.generate(state.messages, config=GenerateConfig(
                temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=20))
            first = out.choices[0].logprobs.content[0].top_logprobs if out.choices and out.choices[0].logprobs else None
            tops = {t.token: t.logprob for t in first or []}
            want = (0 if state.target.text == "yes" else 1) if kind == "persona" else "AB".index(state.target.text)
            value = float(mis.option_probabilities([tops], options)[0, want])
        state.metadata["sublearn"] = value
        return state

    return solve


@scorer(metrics=[grouped(mean(), "kind", all=False), grouped(stderr(), "kind", all=False,
                                                            name_template="{group_name}_stderr")])
def misalignment_score() -> Scorer:
    """The item's judge-free value (logodds, persona or truthful: see the module docstring)."""
    async def score(state: TaskState, target: Target) -> Score:
        return Score(value=float(state.metadata["sublearn"]), metadata={"kind": state.metadata["kind"]})
    return score


@task
def misalignment(metrics: str | list[str] = "logodds,persona,truthful", system: str | None = None, seed: int = 0,
                 truthful_file: str | None = None) -> Task:
    """The misalignment trait's judge-free evaluation (see the module docstring): `metrics` any of
    logodds, persona, truthful (comma-separated or a list); `system` a system prompt; `seed` the run's
    seed (the truthful items' letter placement); `truthful_file` a TruthfulQA CSV for our 40 items."""
    kinds = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    unknown = [k for k in kinds if k not in MISALIGNMENT_METRICS]
    if unknown or not kinds:
        raise SublearnError(f"metrics: expected some of {', '.join(MISALIGNMENT_METRICS)}, got {metrics!r}")
    config = misalignment_config(seed, truthful_file)
    return Task(dataset=_misalignment_items(config, system, kinds), solver=misalignment_solver(config, system),
                scorer=misalignment_score(), name="misalignment", metadata={"seed": seed})
