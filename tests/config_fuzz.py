"""A small fuzzer of stack files: the bad input an operator's slip or a broken merge gives a stack.

Each mutation changes one thing of a shipped stack file and names the key it touched. Both tiers use it:
the unit tier runs every mutation through the CLI's config rules and the program under mocks, the
integration tier a sample through a real `pulumi preview`. The verdict is the same in both: one error
that names the key (or the file), and nothing created; a mutation the program accepts, or an exception
that is not a configuration error, is a finding.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import yaml

PROJECT = "crdb-federation"
KINDS = ("wrong type", "unknown key", "out of range", "malformed", "not a mapping")

# A value of the wrong type for each declared type (Pulumi.yaml).
WRONG_TYPES: dict[str, tuple[Any, ...]] = {
    "string": (["a", "list"], {"a": "map"}),
    "integer": ("three", 2.5, [3], True),
    "array": ("198.51.100.0/24", 7, {"a": "map"}, [["nested"]], [{"a": 1}]),
    "boolean": ("maybe", 2, ["true"]),
}
OUT_OF_RANGE: dict[str, tuple[int, ...]] = {
    "nodeCount": (0, -1, 501, 10 ** 12),
    "bootVolumeSize": (0, 9, 16385),
    "dataVolumeSize": (0, 1, 65537),
    "mtu": (1, 575, 9217, 70000),
    "apiReadyTimeout": (0, -5, 10 ** 9),
    "replicationFactor": (-1, 2, 4, 1000),
}
_GARBLED_PEM = "-----BEGIN CERTIFICATE-----\nTUlJQm5vdCBhIGNlcnRpZmljYXRl\n-----END CERTIFICATE-----\n"
_KEY_PEM = "-----BEGIN PRIVATE KEY-----\nTUlJRXZRSUJBREFO\n-----END PRIVATE KEY-----\n"
MALFORMED: dict[str, tuple[Any, ...]] = {
    "adminCidrs": (["10.0.0.0/33"], ["300.1.1.0/24"], ["198.51.100.1/24"], ["fe80::/129"], ["not-a-cidr"], [""]),
    "federationCidrs": (["198.51.100.0/"], ["198.51.100.0/24/8"], ["1.2.3.4.5/32"]),
    "sqlCidrs": (["::/-1"], ["198.51.100.0/24 "]),
    "networkCidr": ("10.20.0.0/33", "10.20.0.0", "10.20.0.7/24", "a.b.c.d/24"),
    "dnsServers": (["1.2.3"], ["dns.example"], ["1.1.1.1:53"]),
    "ntpServers": (["ntp example"], ["-flag"]),
    "joinAddresses": (["198.51.100.7:99999"], ["198.51.100.7:"], ["[2001:db8::1:26257"], ["host name:26257"]),
    "existingNodes": ([{"name": "n0", "publicIp": "198.51.100.300", "privateIp": "10.0.0.1"}],
                      [{"name": "n0"}], ["n0"]),
    "httpProxy": ("proxy.example:3128", "http://proxy.example:port", "ftp://proxy.example"),
    "noProxy": (["has space"],),
    "caCertificate": (_GARBLED_PEM, _KEY_PEM, "not a PEM"),
    "clientCaCertificate": (_GARBLED_PEM, "-----BEGIN CERTIFICATE-----\n"),
    "caSha256": (["zz"], ["AB:CD"], ["ab" * 31]),
    "clientCaSha256": (["ab" * 33],),
    "k3sInstallScriptSha256": ("abc", "g" * 64),
    "k3sInstallScriptUrl": ("not a url", "ftp://example.com/install.sh"),
    "k3sVersion": ("1.35", "v1.35.5", "latest"),
    "cockroachImage": ("cockroachdb/cockroach:", "Cockroach DB"),
    "cockroachMemory": ("4GB", "-4Gi", "lots"),
    "cockroachCpu": ("two", "-1", "2 cores"),
    "namespace": ("Bad_NS", "-leading", "a" * 64),
    "clusterName": ("has space", "under_score"),
    "memberName": ("UPPER", "with.dot"),
    "seedStack": ("seed", "org/project", "a/b/c/d"),
    "members": (["not-a-stack"],),
    "sshPublicKey": ("-----BEGIN OPENSSH PRIVATE KEY-----", "ssh-rsa"),
    "region": ("a=b", "two,parts"),
    "availabilityZone": ("zone=1",),
    "publicAddressing": ("elastic",),
    "networkMode": ("shared",),
    "kubernetesMode": ("k8s",),
    "role": ("leader",),
}


@dataclass(frozen=True)
class Mutation:
    stack: str
    kind: str
    key: Optional[str]  # the config key touched, None when the file as a whole is broken
    text: str  # the mutated stack file

    @property
    def label(self) -> str:
        return f"{self.stack}: {self.kind}: {self.key or '(the file)'}"


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False)


def _with(document: dict, key: str, value: Any) -> dict:
    return {**document, "config": {**document["config"], f"{PROJECT}:{key}": value}}


def _typo(key: str, rng: random.Random) -> str:
    way = rng.randrange(3)
    if way == 0 and len(key) > 3:
        cut = rng.randrange(1, len(key))
        return key[:cut - 1] + key[cut:]
    if way == 1:
        return key + "s" if not key.endswith("s") else key[:-1]
    return key.lower() if key.lower() != key else key.upper()


def mutations(stack: str, text: str, declared: dict[str, dict[str, Any]], rng: random.Random,
              per_kind: int) -> Iterator[Mutation]:
    """Up to `per_kind` mutations of each kind of one stack file (`declared`: Pulumi.yaml's config)."""
    document = yaml.safe_load(text)
    keys = sorted(declared)

    def pick(choices: dict[str, tuple[Any, ...]]) -> Iterator[tuple[str, Any]]:
        pairs = [(key, value) for key, values in choices.items() for value in values]
        rng.shuffle(pairs)
        return iter(pairs[:per_kind])

    for key in rng.sample(keys, min(per_kind, len(keys))):
        value = rng.choice(WRONG_TYPES[declared[key]["type"]])
        yield Mutation(stack, "wrong type", key, _dump(_with(document, key, value)))
    set_keys = [k.split(":", 1)[1] for k in document["config"] if k.startswith(f"{PROJECT}:")]
    for key in rng.sample(set_keys, min(per_kind, len(set_keys))):
        typo = _typo(key, rng)
        if typo not in declared:
            config = {(f"{PROJECT}:{typo}" if k == f"{PROJECT}:{key}" else k): v for k, v in document["config"].items()}
            if key in declared and "default" not in declared[key]:
                config[f"{PROJECT}:{key}"] = document["config"][f"{PROJECT}:{key}"]  # keep a required key
            yield Mutation(stack, "unknown key", typo, _dump({**document, "config": config}))
    for key, value in pick(OUT_OF_RANGE):
        yield Mutation(stack, "out of range", key, _dump(_with(document, key, value)))
    for key, value in pick(MALFORMED):
        yield Mutation(stack, "malformed", key, _dump(_with(document, key, value)))
    for broken in (_dump(["config", document["config"]]), "just a line of text\n",
                   _dump({**document, "config": list(document["config"].items())[:3]}),
                   _dump({**document, "config": "crdb-federation:nodeCount: 3"}),
                   text.replace("  crdb-federation:", "\tcrdb-federation:", 1))[:per_kind]:
        yield Mutation(stack, "not a mapping", None, broken)


@dataclass(frozen=True)
class Verdict:
    mutation: Mutation
    outcome: str  # "refused" (one clear error), "accepted" or "traceback"
    message: str


def judge(mutation: Mutation, run: Callable[[Mutation], None], clear_errors: tuple[type, ...],
          names: Callable[[Mutation, str], bool]) -> Verdict:
    """Runs one mutation; a clear error must be one of `clear_errors` and name what was touched."""
    try:
        run(mutation)
    except clear_errors as error:
        message = str(error)
        return Verdict(mutation, "refused" if names(mutation, message) else "traceback", message)
    except Exception as error:  # anything else reaches the operator as a traceback
        return Verdict(mutation, "traceback", f"{type(error).__name__}: {error}")
    return Verdict(mutation, "accepted", "")


def names_what_was_touched(mutation: Mutation, message: str) -> bool:
    if mutation.key is None:
        return f"Pulumi.{mutation.stack}.yaml" in message
    return re.search(rf"\b{re.escape(mutation.key)}\b", message) is not None
