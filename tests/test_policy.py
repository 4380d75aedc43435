"""The policy pack's rules on what the program registers under mocks: the program passes every one, and a
resource broken the way a change to the program could break it fails the rule that guards it."""

from __future__ import annotations

import copy

import pytest

from policy.rules import RULES
from tests.harness import MEMBER, SEED_STACK, pinned_to, run_program


def violations(run):
    found = []
    for resource in run.cloud.resources:
        for name, (_, rule) in RULES.items():
            for message in rule(resource.type, resource.outputs, resource.urn):
                found.append((name, resource.name, message))
    return found


def test_the_program_passes_every_rule(seed, signing_seed, waiting_member, member):
    for run in (seed, signing_seed, waiting_member, member):
        assert violations(run) == []


def broken(run, suffix, change):
    resource = next(r for r in run.cloud.resources if r.type.endswith(suffix))
    props = copy.deepcopy(resource.outputs)
    change(props)
    return resource.type, props, resource.urn


@pytest.mark.parametrize("rule, suffix, change, expected", [
    ("no-world-open-sensitive-port", "secGroupRule:SecGroupRule",
     lambda p: p.update(remoteIpPrefix="0.0.0.0/0", portRangeMin=26258, portRangeMax=26258),
     "CockroachDB SQL (26258-26258) open to 0.0.0.0/0"),
    ("no-world-open-sensitive-port", "secGroupRule:SecGroupRule",
     lambda p: p.update(remoteIpPrefix="::/0", portRangeMin=None, portRangeMax=None), "every port is open to ::/0"),
    ("servers-boot-from-a-config-drive", "compute/instance:Instance", lambda p: p.update(configDrive=False),
     "without a config drive"),
    ("tls-stays-on", "apps/v1:DaemonSet",
     lambda p: p["spec"]["template"]["spec"]["containers"][0]["command"].append("--insecure"), "--insecure"),
    ("replication-factor-odd-and-at-least-three", "batch/v1:CronJob",
     lambda p: p["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"].__setitem__(
         2, "factor=4"), "replication factor 4"),
])
def test_each_rule_fails_a_resource_broken_the_way_it_guards_against(seed, rule, suffix, change, expected):
    resource_type, props, urn = broken(seed, suffix, change)
    messages = RULES[rule][1](resource_type, props, urn)
    assert messages and expected in messages[0], messages
    others = [name for name, (_, other) in RULES.items() if name != rule and other(resource_type, props, urn)]
    assert not others


def test_a_member_that_reads_a_ca_key_from_the_seed_fails(seed_outputs):
    old_seed = {**seed_outputs, "caPrivateKey": "-----BEGIN PRIVATE KEY-----\n..."}
    run = run_program(pinned_to(seed_outputs, MEMBER), stack="vexxhost", stack_outputs={SEED_STACK: old_seed})
    [(name, resource, message)] = violations(run)
    assert name == "no-ca-key-from-another-stack" and "exports caPrivateKey" in message
