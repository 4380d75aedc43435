"""Bad input, all at once: every shipped stack file, mutated (tests/config_fuzz.py), runs through the CLI's
config rules (federation/stack_config.py, checked against the real CLI in the integration tier) and the
program under mocks, as a preview would. Each mutation gets one clear error naming the key, the value
and what is expected, and nothing is created."""

from __future__ import annotations

import random
import shutil
from collections import Counter

import pytest

from components.settings import SettingsError
from federation.runner import stack_names
from federation.stack_config import StackConfigError, declared_config, resolve
from tests.config_fuzz import KINDS, Mutation, judge, mutations, names_what_was_touched
from tests.fakes import FakeCloud
from tests.harness import ROOT, SEED_SECRETS, SEED_STACK, run_program

SEED = 2026_12_01
PER_KIND = 4


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copy(ROOT / "Pulumi.yaml", root / "Pulumi.yaml")
    (root / "stacks").mkdir()
    _, declared = declared_config(ROOT / "Pulumi.yaml")
    rng = random.Random(SEED)
    found = []
    for stack in stack_names():
        text = (ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text()
        for mutation in mutations(stack, text, declared, rng, PER_KIND):
            cloud = FakeCloud()

            def preview(m: Mutation) -> None:
                (root / "stacks" / f"Pulumi.{m.stack}.yaml").write_text(m.text)
                config = resolve(m.stack, root)
                run_program(config, stack=m.stack, cloud=cloud, preview=True,
                            secrets=SEED_SECRETS if m.stack == "seed" else None,
                            stack_outputs={SEED_STACK: {}})

            verdict = judge(mutation, preview, (StackConfigError, SettingsError), names_what_was_touched)
            found.append((verdict, len(cloud.resources)))
    return found


def test_every_kind_of_mutation_is_tried_on_every_stack(verdicts):
    tried = Counter((v.mutation.stack, v.mutation.kind) for v, _ in verdicts)
    assert {kind for _, kind in tried} == set(KINDS)
    assert all(tried[(stack, kind)] for stack in stack_names() for kind in KINDS), tried


def test_every_mutation_gets_one_clear_error_and_creates_nothing(verdicts):
    outcomes = Counter(v.outcome for v, _ in verdicts)
    print(f"config fuzz: {len(verdicts)} mutations of {len(stack_names())} stack files: {dict(outcomes)}")
    bare = [(v.mutation.label, v.message[:300]) for v, _ in verdicts if v.outcome == "traceback"]
    accepted = [v.mutation.label for v, _ in verdicts if v.outcome == "accepted"]
    assert not bare, bare
    assert not accepted, accepted
    assert all(created == 0 for _, created in verdicts), [v.mutation.label for v, n in verdicts if n]
