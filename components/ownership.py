"""The mark that proves a cloud resource is this stack's: a random ID kept in the stack's own state.

An operator's project holds their own servers, volumes and key pairs, often named like ours (`otc-bastion`), and
on some clouds another stack of the same name in another project. So a name proves nothing, and neither does a
member name written on a resource. What the recovery sweep (federation/recovery.py) may delete is what carries
this stack's owner ID, which no other state holds: Neutron resources as a tag, servers and volumes as metadata.
Key pairs and server groups have no place for it (Nova's API takes a name, a key and a policy), so the sweep only
lists those.

The ID is a `random.RandomId` with no inputs that ever change: it is made once, on the stack's first `up`, before
any cloud resource (each depends on it), and lives as long as the state.
"""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_random as random

# The mark is "crdb-federation-owner:" and 16 hex digits (38 characters): within any Neutron's tag length, and
# free of the "," that Neutron's `tags` filter splits on.
OWNER_KEY = "crdb-federation-owner"
STACK_KEY = "crdb-federation-stack"  # for people reading the cloud; never part of the proof
OWNER_SUFFIX = "-owner"
OWNER_TYPE = "random:index/randomId:RandomId"


def owner_tag(owner_id: str) -> str:
    """The Neutron tag that marks a resource as the stack's."""
    return f"{OWNER_KEY}:{owner_id}"


def owner_metadata(owner_id: str, stack: str) -> dict[str, str]:
    """The Nova and Cinder metadata that marks a server or volume as the stack's (values up to 255 characters)."""
    return {OWNER_KEY: owner_id, STACK_KEY: stack}


def owner_id_in_state(resources: list[dict], member: str) -> Optional[str]:
    """The stack's owner ID as its exported state holds it (pure); None where the state predates it."""
    for resource in resources:
        if resource.get("type") == OWNER_TYPE and resource.get("urn", "").endswith(f"::{member}{OWNER_SUFFIX}"):
            return (resource.get("outputs") or {}).get("hex") or None
    return None


class StackOwner:
    """The stack's owner ID, and the marks made of it, for every OpenStack resource of the member."""

    def __init__(self, name: str, opts: Optional[pulumi.ResourceOptions] = None):
        # Eight bytes: 16 hex digits, unique across every state there will ever be.
        self.owner_id: pulumi.Output[str] = random.RandomId(f"{name}{OWNER_SUFFIX}", byte_length=8, opts=opts).hex
        stack = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
        self.tags: pulumi.Output[list[str]] = self.owner_id.apply(lambda owner: [owner_tag(owner)])
        self.metadata: pulumi.Output[dict[str, str]] = self.owner_id.apply(lambda owner: owner_metadata(owner, stack))
