"""The dynamic resources' providers as the engine keeps them.

Pulumi's Python dynamic providers are pickled with dill, which stores an importable class by reference: its
module path and class name (pulumi v3.259.0 sdk/python/lib/pulumi/dynamic/dynamic.py serialize_provider).
The state keeps that reference in each resource's `__provider`, and a delete or refresh unpickles the stored
one (dynamic/__main__.py). Renaming or moving one of these classes would leave every existing resource of
every stack undeletable (ModuleNotFoundError at destroy): that must fail here, in CI, first. To move one,
keep an alias at the old path.
"""

from __future__ import annotations

import base64
import pickletools

import dill
import pytest

from pulumi.dynamic.dynamic import serialize_provider

from components.decommission import _DecommissionProvider
from components.kube_nodes import _NodeRegistrationProvider
from components.readiness import _ApiReadinessProvider

# What the states of deployed stacks hold; never change an entry, only add.
PINNED = {
    _DecommissionProvider: ("components.decommission", "_DecommissionProvider"),
    _ApiReadinessProvider: ("components.readiness", "_ApiReadinessProvider"),
    _NodeRegistrationProvider: ("components.kube_nodes", "_NodeRegistrationProvider"),
}


def referenced_class(serialized: str) -> tuple[str, str]:
    """The (module, class) a serialized provider refers to, read from its pickle opcodes."""
    strings = []
    for opcode, argument, _ in pickletools.genops(base64.b64decode(serialized)):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        if opcode.name == "STACK_GLOBAL":
            return strings[-2], strings[-1]
        if opcode.name == "GLOBAL":
            module, name = argument.split(" ", 1)
            return module, name
    raise AssertionError("the provider was pickled by value, not by reference")


@pytest.mark.parametrize("provider", PINNED, ids=lambda p: p.__name__)
def test_each_provider_is_stored_as_the_reference_existing_states_hold(provider):
    serialized = serialize_provider(provider())
    assert referenced_class(serialized) == PINNED[provider]
    # And what a state holds loads back into the class a delete would call.
    assert type(dill.loads(base64.b64decode(serialized))) is provider


def test_a_reference_that_no_longer_resolves_fails_to_load():
    """What happens at an operator's destroy after a rename: the check above is what prevents it."""
    serialized = serialize_provider(_NodeRegistrationProvider())
    moved = base64.b64decode(serialized).replace(b"components.kube_nodes", b"components.kube_nodez")
    with pytest.raises(ModuleNotFoundError):
        dill.loads(moved)
