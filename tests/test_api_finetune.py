"""API fine-tuning against the fake OpenAI server: each row uploaded once, resume after crashes,
clear errors for failed/cancelled jobs, and the key never written."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai import FakeOpenAI  # noqa: E402

from sublearn.backends.openai_api import finetune as api_finetune  # noqa: E402
from sublearn.backends.openai_api.finetune import run_finetune, training_jsonl  # noqa: E402
from sublearn.errors import SublearnError  # noqa: E402

KEY = "sk-fake-FT-SECRET-4b8d2e6f1a3c"


class Crash(BaseException):
    """Stands in for a kill -9 / Ctrl-C: not an Exception, so nothing catches it."""


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setattr(api_finetune, "_sleep", lambda s: None)  # polls do not wait
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv


@pytest.fixture()
def rows():
    return [[{"role": "user", "content": f"Continue: {i}, {i + 1}"},
             {"role": "assistant", "content": f"{i + 2}, {i + 3}, {i * 7 % 1000}"}] for i in range(25)]


def finetune(server, rows, out: Path, **kw) -> str:
    kw.setdefault("base_model", "gpt-4.1-nano")
    return run_finetune(rows, out, base_url=server.base_url, poll_interval=0, **kw)


def test_each_row_uploaded_once_and_job_configured(server, rows, tmp_path):
    model = finetune(server, rows, tmp_path / "job", n_epochs=10, seed=3, suffix="owl-s3")
    assert model == "ft:gpt-4.1-nano:fake:owl-s3:0001"
    assert server.state.uploaded_rows == [{"messages": r} for r in rows]  # each row, once, in order
    assert server.counts["POST /v1/files"] == 1 and server.counts["POST /v1/fine_tuning/jobs"] == 1
    [job] = server.state.jobs.values()
    assert job["body"]["hyperparameters"] == {"n_epochs": 10, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert job["body"]["seed"] == 3 and job["body"]["suffix"] == "owl-s3"
    assert job["polls"] == 3  # validating_files -> queued -> running -> succeeded
    state = json.loads((tmp_path / "job" / "job.json").read_text())
    assert state["file_id"] == "file-0001" and state["job_id"] == "ftjob-0001"
    assert state["fine_tuned_model"] == model and state["rows"] == 25
    assert (tmp_path / "job" / "train.jsonl").read_bytes() == training_jsonl(rows)


def test_finished_job_reruns_without_requests_or_key(server, rows, tmp_path, monkeypatch):
    model = finetune(server, rows, tmp_path / "job")
    total = server.counts["total"]
    monkeypatch.delenv("OPENAI_API_KEY")
    assert finetune(server, rows, tmp_path / "job") == model
    assert server.counts["total"] == total


def test_resume_after_crash_while_polling(server, rows, tmp_path, monkeypatch):
    def crash(seconds):
        raise Crash

    monkeypatch.setattr(api_finetune, "_sleep", crash)
    with pytest.raises(Crash):
        finetune(server, rows, tmp_path / "job")
    state = json.loads((tmp_path / "job" / "job.json").read_text())
    assert state["job_id"] == "ftjob-0001" and state["fine_tuned_model"] is None
    monkeypatch.setattr(api_finetune, "_sleep", lambda s: None)
    assert finetune(server, rows, tmp_path / "job") == "ft:gpt-4.1-nano:fake:model:0001"
    assert server.counts["POST /v1/files"] == 1 and server.counts["POST /v1/fine_tuning/jobs"] == 1
    assert len(server.state.uploaded_rows) == len(rows)


def test_resume_after_failure_before_job_creation(server, rows, tmp_path):
    server.fail_next(1, status=400, path_prefix="/v1/fine_tuning/jobs")
    with pytest.raises(SublearnError, match="create job: HTTP 400"):
        finetune(server, rows, tmp_path / "job")
    state = json.loads((tmp_path / "job" / "job.json").read_text())
    assert state["file_id"] == "file-0001" and state["job_id"] is None
    assert finetune(server, rows, tmp_path / "job")
    assert server.counts["POST /v1/files"] == 1 and server.counts["POST /v1/fine_tuning/jobs"] == 2  # 1 refused


def test_lost_ids_are_found_on_the_server(server, rows, tmp_path, monkeypatch):
    """A crash between a request and storing its answer: the rerun adopts the file and the job."""
    monkeypatch.setattr(api_finetune, "_sleep", lambda s: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        finetune(server, rows, tmp_path / "job")
    path = tmp_path / "job" / "job.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "file_id": None, "job_id": None, "status": None}))
    monkeypatch.setattr(api_finetune, "_sleep", lambda s: None)
    assert finetune(server, rows, tmp_path / "job") == "ft:gpt-4.1-nano:fake:model:0001"
    assert server.counts["POST /v1/files"] == 1 and server.counts["POST /v1/fine_tuning/jobs"] == 1
    assert server.counts["GET /v1/files"] == 1 and server.counts["GET /v1/fine_tuning/jobs"] == 1


def test_transient_errors_while_polling_are_retried(server, rows, tmp_path):
    server.fail_next(2, status=503, retry_after_ms="1", path_prefix="/v1/fine_tuning/jobs/")
    server.fail_next(1, status=429, retry_after_ms="1", path_prefix="/v1/files")
    assert finetune(server, rows, tmp_path / "job").startswith("ft:")
    assert server.counts["injected"] == 3 and server.counts["POST /v1/files"] == 2
    assert len(server.state.uploaded_rows) == len(rows)  # the refused upload recorded nothing


def test_out_of_retries_is_a_one_line_error_and_resumable(server, rows, tmp_path):
    server.fail_next(2, status=503, retry_after_ms="1", path_prefix="/v1/files")
    with pytest.raises(SublearnError, match=r"fine-tuning upload: gave up after 2 attempts \(last: HTTP 503") as err:
        finetune(server, rows, tmp_path / "job", max_retries=1)
    assert "\n" not in str(err.value) and server.counts["POST /v1/files"] == 2
    assert finetune(server, rows, tmp_path / "job", max_retries=1).startswith("ft:")
    assert len(server.state.uploaded_rows) == len(rows)  # the refused uploads recorded nothing


def test_authentication_failure_is_not_retried(server, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-FT-key-000000000")
    with pytest.raises(SublearnError, match="fine-tuning upload: authentication failed") as err:
        finetune(server, rows, tmp_path / "job")
    assert "\n" not in str(err.value) and "wrong-FT-key" not in str(err.value)
    assert server.counts["total"] == 1


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_failed_or_cancelled_job_is_a_one_line_error(server, rows, tmp_path, outcome):
    server.state.job_outcome = outcome
    with pytest.raises(SublearnError, match=f"ftjob-0001 {outcome}") as err:
        finetune(server, rows, tmp_path / "job")
    message = str(err.value)
    assert "\n" not in message and "job.json" in message
    if outcome == "failed":
        assert "invalid role" in message  # the API's own message
    total = server.counts["total"]
    with pytest.raises(SublearnError, match=outcome):  # no silent new job on rerun
        finetune(server, rows, tmp_path / "job")
    assert server.counts["total"] == total


def test_max_wait_leaves_the_job_resumable(server, rows, tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(api_finetune, "_now", lambda: float(next(clock)))
    with pytest.raises(SublearnError, match="still queued after 50s; rerun to keep waiting"):
        finetune(server, rows, tmp_path / "job", max_wait=50)
    assert finetune(server, rows, tmp_path / "job").startswith("ft:")
    assert server.counts["POST /v1/fine_tuning/jobs"] == 1


def test_other_data_in_the_same_directory_is_refused(server, rows, tmp_path, monkeypatch):
    monkeypatch.setattr(api_finetune, "_sleep", lambda s: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        finetune(server, rows, tmp_path / "job")
    with pytest.raises(SublearnError, match="different data or settings"):
        finetune(server, rows[:-1], tmp_path / "job")
    with pytest.raises(SublearnError, match="different data or settings"):
        finetune(server, rows, tmp_path / "job", n_epochs=2)


def test_missing_key_and_bad_rows(server, rows, tmp_path, monkeypatch):
    with pytest.raises(SublearnError, match="row 0: expected a chat ending with an assistant"):
        finetune(server, [[{"role": "user", "content": "x"}]], tmp_path / "a")
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(SublearnError, match="OPENAI_API_KEY is not set") as err:
        finetune(server, rows, tmp_path / "b")
    assert "\n" not in str(err.value) and server.counts["total"] == 0


def test_key_never_written_or_logged(server, rows, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.fail_next(1, status=500, retry_after_ms="1")
    finetune(server, rows, tmp_path / "job")
    server.state.job_outcome = "failed"
    with pytest.raises(SublearnError) as err:
        finetune(server, rows, tmp_path / "other", seed=1)
    assert any(KEY in h for h in server.state.auth_headers)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"job.json", "train.jsonl"}
    for text in [*(p.read_text() for p in files), caplog.text, str(err.value)]:
        assert KEY not in text


def test_bad_settings_are_one_line_errors(server, rows, tmp_path):
    with pytest.raises(SublearnError, match="fine-tuning: field 'suffix'"):
        finetune(server, rows, tmp_path / "job", suffix="x" * 65)
    with pytest.raises(SublearnError, match="fine-tuning: field 'n_epochs"):
        finetune(server, rows, tmp_path / "job", n_epochs="many")
    assert server.counts["total"] == 0
