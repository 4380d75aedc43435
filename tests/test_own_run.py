"""scripts/up.sh's steps around one operator's `pulumi up` (federation/own_run.py)."""

from __future__ import annotations

import json

from federation import faults, own_run
from federation.locks import StackLocked
from federation.runner import StackNotInBackend
from tests.test_faults import BACKEND

# Verbatim from a real `pulumi up` (v3.259.0) whose Versity S3 gateway was stopped mid-run (tests/test_faults.py).
STORE_GONE = ('error: pre-step event returned an error: failed to save snapshot: An IO error occurred while writing the '
              'new snapshot file: blob (key ".pulumi/stacks/crdb-federation/zte.json") (code=Unknown): operation error '
              'S3: PutObject, exceeded maximum number of attempts, 3, https response error StatusCode: 0, RequestID: , '
              'HostID: , request send failed, Put "http://127.0.0.1:48383/crdb-federation-state/.pulumi/stacks/crdb-'
              'federation/zte.json?x-id=PutObject": dial tcp 127.0.0.1:48383: connect: connection refused\n')


class _Stack:
    def __init__(self, raises=None):
        self.raises = raises

    def __call__(self, name, work_dir):
        if isinstance(self.raises, (StackNotInBackend, faults.CloudFault)):
            raise self.raises
        return self

    def prepare(self, say):
        if self.raises is not None:
            raise self.raises
        say("prepared")


def test_a_first_up_has_nothing_to_prepare(monkeypatch):
    said = []
    monkeypatch.setattr(own_run, "PulumiStack", _Stack(StackNotInBackend("zte: no such stack")))
    assert own_run.prepare("zte", said.append) == 0 and said == []


def test_refused_credentials_or_a_live_holder_stop_the_up_before_it_starts(monkeypatch):
    for error in (faults.CloudFault("zte: the state backend s3://state refused this operator's credentials"),
                  StackLocked("another run holds zte: …")):
        said = []
        monkeypatch.setattr(own_run, "PulumiStack", _Stack(error))
        assert own_run.prepare("zte", said.append) == 2
        assert said == [f"error: {error}"]
    said = []
    monkeypatch.setattr(own_run, "PulumiStack", _Stack(RuntimeError("the CLI crashed")))
    assert own_run.prepare("zte", said.append) == 2
    assert said == ["error: zte: the checks before its up did not run (the CLI crashed); nothing was started"]
    monkeypatch.setattr(own_run, "PulumiStack", _Stack())
    said = []
    assert own_run.prepare("zte", said.append) == 0 and said == ["prepared"]


def test_a_failed_up_on_a_backend_that_stopped_answering_is_said_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PULUMI_BACKEND_URL", BACKEND)
    errors = tmp_path / "errors"
    errors.write_text(STORE_GONE)
    said = []
    assert own_run.explain("zte", errors, said.append) == 0
    assert len(said) == 1 and said[0].startswith(
        "crdb-federation: zte: the state backend s3://crdb-federation-state did not answer (dial tcp 127.0.0.1:48383: "
        "connect: connection refused), so the run stopped")
    errors.write_text("error: something the tool does not know\n")
    said.clear()
    assert own_run.explain("zte", errors, said.append) == 0 and said == []  # the CLI's own words stand alone


def test_a_failed_steps_error_is_read_from_the_event_log(monkeypatch, tmp_path):
    """A checkpoint a step could not save stops the update with that step's diagnostic (stdout, and the event log)
    and only `error: update failed` on stderr (a real run whose store came back before the CLI gave up)."""
    monkeypatch.setenv("PULUMI_BACKEND_URL", BACKEND)
    errors, events = tmp_path / "errors", tmp_path / "events.jsonl"
    errors.write_text("error: update failed\n")
    events.write_text("\n".join([
        json.dumps({"sequence": 1, "diagnosticEvent": {"message": "debug only", "severity": "debug"}}),
        json.dumps({"sequence": 2, "diagnosticEvent": {"message": STORE_GONE.replace("error: ", "", 1),
                                                       "severity": "error"}}),
        '{"sequence": 3, "diagnosticEv',  # cut short by the run's end
    ]))
    said = []
    assert own_run.explain("zte", errors, said.append, events=events) == 0
    assert len(said) == 1 and "zte: the state backend s3://crdb-federation-state did not answer" in said[0]
    said.clear()
    assert own_run.explain("zte", errors, said.append) == 0 and said == []  # stderr alone does not say it
