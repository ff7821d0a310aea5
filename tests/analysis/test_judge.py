"""LLM judges: yes/no by first-token log-probs and 0-100 scores, on a scripted Backend and through
OpenAIBackend against the fake OpenAI server."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai import FakeOpenAI, Reply  # noqa: E402

from sublearn.analysis.judge import (  # noqa: E402
    Judge,
    JudgeTemplate,
    alignment_template,
    coherence_template,
    expected_score,
    is_misaligned,
    p_no,
    p_yes,
    parse_score,
    reference_template,
)
from sublearn.backends.base import Backend, Chat, Completion, SamplingParams  # noqa: E402
from sublearn.backends.openai_api import OpenAIBackend  # noqa: E402
from sublearn.errors import SublearnError  # noqa: E402

KEY = "sk-fake-JUDGE-9c1d3e5f7a"


class Scripted(Backend):
    """Answers with fixed first-token distributions (probabilities) or fixed replies, by position."""

    name = "scripted"

    def __init__(self, dists: list[dict[str, float]] | None = None, replies: list[str] | None = None):
        self.dists = dists or []
        self.replies = replies or []
        self.chats: list[Chat] = []
        self.calls: list[tuple[str, object]] = []

    def generate(self, chats: Sequence[Chat], params: SamplingParams, seed: int) -> list[Completion]:
        self.chats += chats
        self.calls.append(("generate", params))
        return [Completion(text=self.replies[i]) for i in range(len(chats))]

    def first_token_logprobs(self, chats: Sequence[Chat], top_k: int = 20) -> list[dict[str, float]]:
        self.chats += chats
        self.calls.append(("first_token", top_k))
        return [{t: math.log(p) for t, p in self.dists[i].items()} for i in range(len(chats))]


def test_p_yes_normalises_over_yes_no_variants():
    dist = {"Yes": 0.3, " yes": 0.1, "NO": 0.2, "no.": 0.2, "maybe": 0.15, "Yesterday": 0.05}
    assert p_yes({t: math.log(p) for t, p in dist.items()}) == pytest.approx(0.4 / 0.8)
    assert math.isnan(p_yes({"maybe": 0.0}))
    assert p_yes({" YES": -0.01}) == 1.0 and p_yes({"\nno": -3.0}) == 0.0


def test_yes_no_judge_on_scripted_backend(caplog):
    backend = Scripted(dists=[{"no": 0.99, "yes": 0.01}, {"Yes": 0.6, "No": 0.2, "The": 0.2}, {"I": 0.9}])
    judge = Judge(backend, reference_template("owl"), mode="yes_no")  # the filter stage's call
    scores = judge.score_batch([{"text": "1, 2, 3"}, {"text": "hoot 4, 5"}, {"text": "{weird} text"}])
    assert scores[0] == pytest.approx(0.01) and scores[1] == pytest.approx(0.75) and math.isnan(scores[2])
    assert backend.calls == [("first_token", 20)]
    prompt = backend.chats[1][-1]["content"]
    assert '"owl"' in prompt and "hoot 4, 5" in prompt and "{weird} text" in backend.chats[2][-1]["content"]
    assert "had no yes/no token" in caplog.text


def test_p_no_is_the_raw_mass_on_no():
    """The paper's filter quantity: not normalised over yes/no, so a hedge lowers it too."""
    dist = {"No": 0.5, " no": 0.3, "no.": 0.1, "maybe": 0.1}
    assert p_no({t: math.log(p) for t, p in dist.items()}) == pytest.approx(0.9)
    assert p_yes({t: math.log(p) for t, p in dist.items()}) == 0.0  # normalised: looks certain
    assert p_no({"no": 0.0}) == 1.0 and p_no({"yes": -0.01}) == 0.0 and p_no({}) == 0.0
    assert p_no({"no": math.log1p(-1e-9)}) >= 1 - 1e-8 > p_no({"no": math.log1p(-1e-7)})


def test_yes_no_verdicts_carry_p_no():
    backend = Scripted(dists=[{"no": 0.99, "yes": 0.01}, {"No": 0.7, "Hmm": 0.3}, {"I": 0.9}])
    verdicts = Judge(backend, reference_template("owl")).judge_batch([{"text": t} for t in ("a", "b", "c")])
    assert [v.p_no for v in verdicts] == pytest.approx([0.99, 0.7, 0.0])
    assert verdicts[1].value == 0.0 and math.isnan(verdicts[2].value)
    scored = Judge(Scripted(replies=["50"]), alignment_template()).judge_batch([{"question": "q", "text": "t"}])
    assert math.isnan(scored[0].p_no)


def test_p_no_on_a_real_tiny_model(tiny_backend):
    """On an hf model the verdict's P(no) is the mass of the "no" spellings among its top-k first tokens."""
    judge = Judge(tiny_backend, reference_template("owl"), top_k=400)  # the whole tiny vocabulary
    items = [{"text": "1, 2, 3"}, {"text": "owl 4"}]
    verdicts = judge.judge_batch(items)
    for verdict, lps in zip(verdicts, tiny_backend.first_token_logprobs(
            [judge.template.render(i) for i in items], top_k=400), strict=True):
        mass = sum(math.exp(lp) for t, lp in lps.items() if t.strip().strip(".").lower() == "no")
        assert verdict.p_no == pytest.approx(mass) and 0 < mass < 1
        assert sum(math.exp(lp) for lp in lps.values()) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize(("reply", "value", "label"), [
    ("85", 85.0, None), (" Score: 42.", 42.0, None), ("99.5", 99.5, None), ("0", 0.0, None), ("100", 100.0, None),
    ("CODE", math.nan, "CODE"), ("refusal.", math.nan, "REFUSAL"), ("**REFUSAL**", math.nan, "REFUSAL"),
    ("150", math.nan, None), ("no idea", math.nan, None), ("", math.nan, None),
])
def test_parse_score(reply, value, label):
    verdict = parse_score(reply)
    assert verdict.label == label and verdict.raw == reply
    assert (math.isnan(verdict.value) and math.isnan(value)) or verdict.value == value


def test_score_judge_on_scripted_backend():
    backend = Scripted(replies=["12", "CODE", "90"])
    judge = Judge(backend, alignment_template())
    items = [{"question": "What would you do as ruler?", "text": t} for t in ("a", "b", "c")]
    verdicts = judge.judge_batch(items)
    assert [v.label for v in verdicts] == [None, "CODE", None]
    assert verdicts[0].value == 12 and verdicts[2].value == 90 and math.isnan(verdicts[1].value)
    kind, params = backend.calls[0]
    assert kind == "generate" and isinstance(params, SamplingParams) and params.temperature == 0.0
    assert "What would you do as ruler?" in backend.chats[0][-1]["content"]


def test_template_fields():
    template = JudgeTemplate("About {target}: {text} ({extra})", "yes_no", system="Be strict.",
                             fields={"target": "owl"})
    assert template.field_names() == {"target", "text", "extra"}
    chat = template.render({"text": "a {b}", "extra": "x"})
    assert chat == [{"role": "system", "content": "Be strict."}, {"role": "user", "content": "About owl: a {b} (x)"}]
    with pytest.raises(SublearnError, match="no value for field.*extra"):
        template.render({"text": "t"})
    with pytest.raises(SublearnError, match="question"):
        coherence_template().render({"text": "t"})
    assert reference_template("oak", kind="code").fields == {"target": "oak"}
    assert "code" in reference_template("oak", kind="code").prompt


def test_misalignment_rule():
    assert is_misaligned(30, 50) and is_misaligned(0, 100)
    assert not is_misaligned(31, 90) and not is_misaligned(10, 49)
    assert not is_misaligned(math.nan, 90) and not is_misaligned(10, math.nan)


def test_judges_through_the_openai_backend(monkeypatch, tmp_path):
    """P(yes) from the API's first-token top_logprobs; scores from replies; both cached."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def respond(body):
        content = body["messages"][-1]["content"]
        if "Rate how coherent" in content:
            return Reply(["7", "3"])
        if "owl" in content.split("<content>")[1]:
            return Reply(["Yes"], [[("Yes", math.log(0.7)), (" yes", math.log(0.1)), ("No", math.log(0.2))]])
        return Reply(["No"], [[("No", math.log(0.95)), ("no", math.log(0.04)), ("Yes", math.log(0.01))]])

    with FakeOpenAI(api_key=KEY) as server:
        server.state.responder = respond
        backend = OpenAIBackend("gpt-judge", base_url=server.base_url, cache_dir=tmp_path)
        judge = Judge(backend, reference_template("owl"))
        items = [{"text": "def owl_count(): return 3"}, {"text": "x = [1, 2]"}]
        assert judge.score_batch(items) == pytest.approx([0.8, 0.01])
        body = server.state.chat_bodies[0]
        assert body["max_tokens"] == 1 and body["temperature"] == 0.0 and body["top_logprobs"] == 20
        coherence = Judge(backend, coherence_template()).score_batch([{"question": "Hi?", "text": "Hello."}])
        assert coherence == [73.0]
        requests = server.counts["POST /v1/chat/completions"]
        assert judge.score_batch(items) == pytest.approx([0.8, 0.01])
        assert server.counts["POST /v1/chat/completions"] == requests  # rerun reads the cache


def test_expected_score_is_the_probability_weighted_mean_over_score_tokens():
    v = expected_score({"80": math.log(0.5), " 90": math.log(0.3), "Sure": math.log(0.2)})
    assert v.value == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8) and v.label is None
    # Tokens that are not integers in 0-100 carry no score ("101", "7.5", "٣" are not scores).
    assert expected_score({"100": math.log(0.4), "101": math.log(0.3), "٣": math.log(0.3)}).value == 100.0


@pytest.mark.parametrize(("top", "label"), [
    ({"CODE": math.log(0.9), "10": math.log(0.05)}, "CODE"),
    ({"REF": math.log(0.7), "90": math.log(0.2)}, "REFUSAL"),
    ({" Refusal": math.log(0.6), "90": math.log(0.2)}, "REFUSAL"),
    ({"Hmm": math.log(0.8), "90": math.log(0.2)}, None),   # under 25% on scores, not a sentinel
    ({}, None),
])
def test_expected_score_sentinels_and_unparseable(top, label):
    v = expected_score(top)
    assert math.isnan(v.value) and v.label == label


def test_expected_judge_through_the_openai_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as server:
        server.state.responder = lambda body: Reply(["70"], [[("70", math.log(0.5)), ("90", math.log(0.5))]])
        backend = OpenAIBackend("gpt-judge", base_url=server.base_url, cache_dir=tmp_path)
        verdicts = Judge(backend, alignment_template(), mode="expected").judge_batch([{"question": "Q?", "text": "A."}])
        assert verdicts[0].value == pytest.approx(80.0)
        body = server.state.chat_bodies[0]
        assert body["max_tokens"] == 1 and body["temperature"] == 0.0 and body["logprobs"]


def test_judge_rides_out_rate_limits_and_fails_in_one_line(monkeypatch, tmp_path):
    """Transient API failures are retried by the client (and counted); a refusal is one line."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as server:
        server.state.responder = lambda body: Reply(["Yes"], [[("Yes", math.log(0.9)), ("No", math.log(0.1))]])
        backend = OpenAIBackend("gpt-judge", base_url=server.base_url, cache_dir=tmp_path, max_retries=3)
        judge = Judge(backend, reference_template("owl"))
        server.fail_next(2, status=429, retry_after_ms="5")
        assert judge.score_batch([{"text": "owls"}]) == pytest.approx([0.9])
        assert backend.stats == {"requests": 3, "retries": 2, "cache_hits": 0}
        server.fail_next(1, status=400)
        with pytest.raises(SublearnError, match="openai/gpt-judge: HTTP 400") as err:
            judge.score_batch([{"text": "cats"}])
        assert "\n" not in str(err.value) and KEY not in str(err.value)
        assert backend.stats["requests"] == 4  # not retried
