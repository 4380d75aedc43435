"""Bad input on the real engine: a sample of the config fuzzer's mutations (tests/config_fuzz.py; the unit
tier runs all of them under mocks), each a stack file of its own, through `pulumi preview`. Each gets one
clear error naming the key or the file, no traceback, and not one resource step. For a file that is no
mapping, the CLI v3.259 says only "getting stack configuration: expected project to be an object, was
'[]interface {}'"; `python -m federation` names the file before it starts an engine."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import yaml

from federation.stack_config import declared_config
from tests.config_fuzz import KINDS, mutations, names_what_was_touched
from tests.integration.project import ROOT, step_ops

SOURCES = ("seed", "vexxhost", "zte")  # a seed, an existing provider network, a member behind a proxy
PER_KIND = 1


def _sample():
    _, declared = declared_config(ROOT / "Pulumi.yaml")
    rng = random.Random(2026_12_01)
    found = []
    for stack in SOURCES:
        text = (ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text()
        found += list(mutations(stack, text, declared, rng, PER_KIND))
    return [dataclasses.replace(m, stack=f"fuzz-{i}") for i, m in enumerate(found)]


def _keep_salt(project, stack: str, text: str) -> str:
    """The mutated file with the salt `stack select --create` wrote, where the mutation left a mapping."""
    path = project.directory / "stacks" / f"Pulumi.{stack}.yaml"
    salt = (yaml.safe_load(path.read_text()) or {}).get("encryptionsalt")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(document, dict) and salt:
        return yaml.safe_dump({"encryptionsalt": salt, **document}, sort_keys=False)
    return text


def test_every_sampled_mutation_is_refused_by_a_real_preview_naming_what_is_wrong(project):
    sample = _sample()
    assert {m.kind for m in sample} == set(KINDS)

    def preview(mutation):
        project.select(mutation.stack)
        path = project.directory / "stacks" / f"Pulumi.{mutation.stack}.yaml"
        path.write_text(_keep_salt(project, mutation.stack, mutation.text))
        try:
            events, output = project.events("preview", mutation.stack)
            if mutation.key is None:
                # The CLI's words do not name the file (see below); the tool's, before any engine, do.
                tool = project.tool("preview", mutation.stack, "--no-dashboard")
                output += f"\n(python -m federation preview, exit {tool.returncode}): {tool.stderr}"
        finally:
            path.unlink()
            project.run("stack", "rm", "--yes", "--force", stack=mutation.stack, check=False)
        return mutation, events, output

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(preview, sample))
    verdicts = Counter()
    findings = []
    for mutation, events, output in results:
        errors = [e for e in events if e.get("diagnosticEvent", {}).get("severity") == "error"]
        said = next((line.strip() for line in output.splitlines() if "preview failed" not in line and (
            "error:" in line or f"{mutation.key}" in line and line.lstrip().startswith("- "))), "")
        print(f"{mutation.label}: {said[:300]}")
        refused = bool(errors) or "error:" in output  # the CLI's own refusals come before any event
        clear = refused and names_what_was_touched(mutation, output) and "Traceback" not in output
        verdicts["refused" if clear else "unclear"] += 1
        if not clear or step_ops(events, "openstack:") or step_ops(events, "kubernetes:"):
            findings.append((mutation.label, output[-1500:]))
    print(f"real previews of fuzzed stack files: {len(results)}: {dict(verdicts)}")
    assert not findings, findings
