"""Fake stacks for the federation tool: they play a `pulumi up` with real Automation API engine events."""

import threading
import time

from pulumi.automation.events import EngineEvent

MEMBER_TYPES = [
    "tls:index/privateKey:PrivateKey",
    "openstack:networking/network:Network",
    "openstack:networking/subnet:Subnet",
    "openstack:networking/port:Port",
    "openstack:compute/instance:Instance",
    "pulumi-python:dynamic:Resource",
    "pulumi:providers:kubernetes",
    "kubernetes:core/v1:Namespace",
    "tls:index/locallySignedCert:LocallySignedCert",
    "kubernetes:apps/v1:DaemonSet",
]


def event(kind, resource_type=None, message=None, sequence=0, op="create"):
    data = {"sequence": sequence, "timestamp": int(time.time())}
    if kind == "diagnostic":
        urn = f"urn:pulumi:s::p::{resource_type}::r{sequence}"
        data["diagnosticEvent"] = {"message": message, "color": "never", "severity": "error", "urn": urn}
    else:
        key = {"pre": "resourcePreEvent", "outputs": "resOutputsEvent"}[kind]
        data[key] = {"metadata": {"op": op, "urn": f"urn:pulumi:s::p::{resource_type}::r{sequence}",
                                  "type": resource_type, "provider": ""}}
    return EngineEvent.from_json(data)


class FakeStack:
    """Plays a stack's `pulumi up`: a pre and an outputs event per resource, spread over `duration` seconds."""

    active = 0
    most_active = 0
    lock = threading.Lock()

    def __init__(self, name, duration=0.0, fail_after=None, outputs=None, types=MEMBER_TYPES):
        self.name, self.duration, self.fail_after, self.types = name, duration, fail_after, types
        # By default a member the seed has signed before: it joins in one `up`.
        self._outputs = outputs if outputs is not None else {"stack": f"organization/crdb-federation/{name}",
                                                               "certificatesSigned": True}
        self.calls = []

    def run(self, operation, on_event, on_output):
        self.calls.append(operation)
        with FakeStack.lock:
            FakeStack.active += 1
            FakeStack.most_active = max(FakeStack.most_active, FakeStack.active)
        try:
            step = self.duration / len(self.types)
            for index, resource_type in enumerate(self.types):
                on_event(event("pre", resource_type, sequence=index))
                on_output(f"  + {resource_type} creating")
                if self.fail_after == index:
                    message = f"error: {resource_type}: quota exceeded\n  on cloud {self.name}"
                    on_event(event("diagnostic", resource_type, message=message, sequence=index))
                    # Then the stack's own diagnostic, and the Automation API's exception: its summary.
                    on_event(event("diagnostic", "pulumi:pulumi:Stack", message="update failed", sequence=99))
                    raise RuntimeError("code: 255\n stdout: Resources:\n    + 4 created\n    1 errored\n"
                                       "Duration: 3s\n\n stderr: ")
                time.sleep(step)
                on_event(event("outputs", resource_type, sequence=index))
        finally:
            with FakeStack.lock:
                FakeStack.active -= 1

    def outputs(self):
        return self._outputs

    def prepare(self, on_output):
        self.calls.append("prepare")

    def add_members(self, stacks):
        self.admitted = getattr(self, "admitted", []) + list(stacks)
        return list(stacks)


class FakeCli:
    """The CLI calls PulumiStack makes in a stack's workspace (`workspace._run_pulumi_cmd_sync`), answered from an
    automation-stack fake's own `export_stack`, `outputs` and `get_all_config`, in the CLI's JSON shapes: `pulumi
    stack export` ({"version", "deployment"}), `pulumi stack output --json` and `pulumi config --json` (pulumi
    v3.259.0 pkg/cmd/pulumi/stack/stack_output.go, config/config.go: {key: {"value", "secret", "objectValue"}})."""

    def __init__(self, stack, name="s"):
        self.stack, self.name, self.calls = stack, name, []

    def _run_pulumi_cmd_sync(self, args):
        import json
        from types import SimpleNamespace

        self.calls.append(list(args))
        assert "--show-secrets" not in args, f"{args} decrypts the stack's secrets"
        if args[:2] == ["stack", "export"]:
            return SimpleNamespace(stdout=json.dumps({"version": 3, "deployment": self.stack.export_stack().deployment}))
        if args[:2] == ["stack", "output"]:
            outputs = self.stack.outputs() if hasattr(self.stack, "outputs") else {}
            return SimpleNamespace(stdout=json.dumps({k: getattr(v, "value", v) for k, v in outputs.items()}))
        if args[:1] == ["config"]:
            config = self.stack.get_all_config() if hasattr(self.stack, "get_all_config") else {}
            shown = {}
            for key, value in config.items():
                entry = {"value": value.value, "secret": value.secret}
                try:
                    entry["objectValue"] = json.loads(value.value)
                except (TypeError, ValueError):
                    pass
                shown[key] = entry
            return SimpleNamespace(stdout=json.dumps(shown))
        if args[:2] == ["stack", "--show-name"]:
            return SimpleNamespace(stdout=f"organization/crdb-federation/{self.name}\n")
        raise AssertionError(f"unexpected CLI call {args}")
