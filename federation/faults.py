"""What went wrong with the cloud during a run, in the operator's words: an OpenStack API that did not answer, a
member's Kubernetes API this machine cannot reach, a quota that ran out halfway (a server's boot volume's too), or a
stack it reads that the backend does not have. The engine's own message stays in the stack's log; this one names
the service, the quota or the stack, and what to do.

Recognising is pure (`api_outage`, `quotas_exceeded`, `missing_stack_message`); the quota's headroom and a failed
build's reason are read from the cloud.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

# Go's words for a request that got no answer at all (net/net.go OpError, net/dnsclient.go DNSError, net/http
# transport.go): refused, a connect that timed out (the kernel's ETIMEDOUT, or the dialer's "i/o timeout"), no
# route, a DNS name that does not resolve ("dial tcp: lookup <host>: no such host"), a reset or closed connection.
# A cancel ("context canceled") or a certificate refused is no outage.
_NO_ANSWER = (r"connect: connection refused|connect: connection timed out|i/o timeout|no route to host"
              r"|network is unreachable|no such host|server misbehaving|connection reset by peer"
              r"|TLS handshake timeout|\bEOF\b")
# Only the openstack provider's requests count as the cloud's API: its client wraps every transport in
# gophercloud/utils' RoundTripper (terraform-provider-openstack/utils auth/config.go LoadAndValidate), which words a
# request that got no answer as (v2 client/client.go RoundTrip; max_retries 0 by default, and it retries at once):
#   Post "http://127.0.0.1:9696/v2.0/ports": OpenStack connection error, retries exhausted. Aborting. Last error
#   was: dial tcp 127.0.0.1:9696: connect: connection refused
# and gophercloud an unexpected status as (v2 errors.go ErrUnexpectedResponseCode): Expected HTTP response code
# [201] when accessing [POST http://…], but got 503 instead. Another Go client's `Get "url": … i/o timeout` (the
# Kubernetes provider's, below) is not the cloud's API.
_UNANSWERED = re.compile(r'\b(?:Get|Post|Put|Patch|Delete|Head) "(?P<url>https?://[^"\s]+)": '
                         r"OpenStack connection error, retries exhausted\. Aborting\. Last error was: "
                         rf"(?P<cause>[^\n]*?(?:{_NO_ANSWER}))")
_UNAVAILABLE = re.compile(r"when accessing \[(?:[A-Z]+) (?P<url>https?://[^\]\s]+)\], but got (?P<code>50[0234])")
# pulumi-kubernetes marks the cluster unreachable when its first read of the API server fails, and every
# Kubernetes resource then fails with (v4.32.0 provider/pkg/provider/provider.go Configure, Create, Read):
#   configured Kubernetes cluster is unreachable: unable to load schema information from the API server: Get
#   "https://203.0.113.10:6443/openapi/v2?timeout=32s": dial tcp 203.0.113.10:6443: i/o timeout
# (client-go's discovery request). From the operator's machine that is adminCidrs or the first server, not an outage.
_KUBE_UNREACHABLE = re.compile(r"configured Kubernetes cluster is unreachable: [^\n]*?"
                               r'\b(?:Get|Post|Put|Patch|Delete|Head) "(?P<url>https?://[^"\s]+)": '
                               rf"(?P<cause>[^\n]*?(?:{_NO_ANSWER}))")

# The three services' words for an exhausted quota, and the preflight's name for each resource
# (federation/preflight.py Needs). Neutron: "Quota exceeded for resources: ['floatingip']." (neutron-lib
# exceptions OverQuota).
_NEUTRON_QUOTA = re.compile(r"Quota exceeded for resources: \[(?P<names>[^\]]*)\]")
_NEUTRON_NAMES = {"port": "ports"}
# Nova names every quota the request exhausts, sorted and joined with ", " (nova compute/utils.py
# get_over_quota_detail, exception.py TooManyInstances): "Quota exceeded for cores, ram: Requested 4, 8192, but
# already used 40, 81920 of 40, 81920 cores, ram"; a full server group only "Quota exceeded, too many servers in
# group" (compute/api.py _provision_instances).
_NOVA_NAME = r"(?:instances|cores|ram|server_group_members|server_groups)"
_NOVA_QUOTA = re.compile(rf"Quota exceeded for (?P<names>{_NOVA_NAME}(?:, {_NOVA_NAME})*):")
_NOVA_GROUP_FULL = re.compile(r"Quota exceeded, too many servers in group")
# Cinder, with its fault wrapper's class name in front (cinder api/middleware/fault.py, exception.py
# VolumeLimitExceeded, VolumeSizeExceedsAvailableQuota): "Maximum number of volumes allowed (4) exceeded for quota
# 'volumes'." and "Requested volume or snapshot exceeds allowed gigabytes quota. Requested 20G, …". A volume type's
# own quota is named after the type, `volumes_<type>` and `gigabytes_<type>` (cinder quota.py), and the data
# volumes have dataVolumeType.
_CINDER_QUOTA = re.compile(r"exceeded for quota '(?P<name>volumes(?:_[^'\n]+)?)'"
                           r"|exceeds allowed (?P<size>gigabytes(?:_[^\n]+?)?) quota\. Requested")

# The openstack provider waits for a new server to leave BUILD and reads only Nova's status
# (terraform-provider-openstack v3.4.0 resource_openstack_compute_instance_v2.go, ServerV2StateRefreshFunc), so a
# build Nova aborted says no more than (terraform-plugin-sdk helper/retry UnexpectedStateError):
#   Error waiting for instance (5b1f…) to become ready: unexpected state 'ERROR', wanted target 'ACTIVE'. last
#   error: %!s(<nil>)
# Why is in the server's fault: a Cinder quota hit on its boot volume reads "Build of instance 5b1f… aborted:
# VolumeLimitExceeded: Maximum number of volumes allowed (10) exceeded for quota 'volumes'." (nova
# compute/manager.py _build_resources, BuildAbortException; volume/cinder.py passes Cinder's message on).
_BUILD_IN_ERROR = re.compile(r"Error waiting for instance \((?P<id>[^)\s]+)\) to become ready: unexpected state "
                             r"'ERROR'")

SERVICE_WORDS = {"compute": "compute API (Nova)", "network": "network API (Neutron)",
                 "volumev3": "block storage API (Cinder)", "block-storage": "block storage API (Cinder)",
                 "image": "image API (Glance)", "identity": "identity API (Keystone)",
                 "placement": "placement API"}


class CloudFault(RuntimeError):
    """A run stopped by the cloud, said in the operator's words; the engine's own error is its cause."""


@dataclass(frozen=True)
class ApiOutage:
    url: str
    cause: str
    kubernetes: bool = False  # the member's Kubernetes API, not the cloud's


def api_outage(text: str) -> Optional[ApiOutage]:
    """The first OpenStack request of the run that got no answer (or a 5xx), if any; else the member's Kubernetes
    API, if the Kubernetes provider could not reach it."""
    for pattern in (_UNANSWERED, _UNAVAILABLE):
        match = pattern.search(text)
        if match:
            cause = match.groupdict().get("cause") or f"HTTP {match['code']}"
            return ApiOutage(match["url"], cause.strip())
    match = _KUBE_UNREACHABLE.search(text)
    return ApiOutage(match["url"], match["cause"].strip(), kubernetes=True) if match else None


def _base(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def service_of(url: str, catalog: Iterable[dict[str, Any]]) -> Optional[tuple[str, str]]:
    """(type, name) of the catalog's service whose endpoint the URL is on; keystone's catalog shape."""
    best: Optional[tuple[int, tuple[str, str]]] = None
    for service in catalog:
        for endpoint in service.get("endpoints") or []:
            base = endpoint.get("url") or ""
            if _base(base) == _base(url):
                path = urlsplit(base).path.rstrip("/")
                score = len(path) if urlsplit(url).path.startswith(path) else -1
                if best is None or score > best[0]:
                    best = (score, (service.get("type", ""), service.get("name", "")))
    return best[1] if best else None


def outage_message(stack: str, outage: ApiOutage, service: Optional[tuple[str, str]]) -> str:
    if outage.kubernetes:
        return kube_unreachable_message(stack, outage)
    what = (f"the cloud's {SERVICE_WORDS.get(service[0], service[0] + ' API')}" if service else "a cloud API")
    named = f" ({service[1]})" if service and service[1] and service[1].lower() not in what.lower() else ""
    return (f"{stack}: {what}{named} did not answer at {_base(outage.url)} ({outage.cause}), so the run stopped. "
            "What it had made is in the stack's state (a create whose answer was lost is found and deleted as an "
            "orphan by the next join); once the service answers again, "
            f"run `python -m federation join {stack}` (or `pulumi up`) again: it goes on from there.")


def kube_unreachable_message(stack: str, outage: ApiOutage) -> str:
    return (f"{stack}: this machine cannot reach the member's Kubernetes API at {_base(outage.url)} ({outage.cause}), "
            "so the run stopped; what it had made is in the stack's state. Check that crdb-federation:adminCidrs "
            "includes this machine's public address (only those reach the API's port), that the member's first "
            "server (named <member>-k3s-0) is ACTIVE and its floating IP is associated with it (with kubernetesMode "
            "existing: that the kubeconfig's server answers from here); then run "
            f"`python -m federation join {stack}` again: it goes on from there.")


# The engine's words for a StackReference to a stack the backend does not have (pulumi v3.259.0
# pkg/backend/backend.go GetStackOutputs: `unknown stack %q`, the name as the program passed it). A member reads
# its seedStack, the seed each of its members: which one is missing says what to do.
_UNKNOWN_STACK = re.compile(r'unknown stack "(?P<stack>[^"]+)"')
_LATER = "so the run stopped (what it had made is in the stack's state; the next run completes it)."


@dataclass(frozen=True)
class References:
    """The stacks a stack reads, as its stack file names them."""

    seed_stack: str = ""
    members: tuple[str, ...] = ()


def references_of(stack: str, root: Any) -> References:
    """The stack's seedStack and members; none if its stack file cannot be read (the run's own error says why)."""
    from . import stack_config

    try:
        values = stack_config.resolve(stack, root)
    except Exception:
        return References()
    return References(str(values.get("seedStack") or ""), tuple(values.get("members") or ()))


def missing_stack_message(stack: str, text: str, references: References = References()) -> Optional[str]:
    match = _UNKNOWN_STACK.search(text)
    if not match:
        return None
    missing = match["stack"]
    if missing in references.members:
        return (f"{stack}: crdb-federation:members lists {missing}, which does not exist in this state backend, "
                f"{_LATER} If that member was removed or its name is misspelt, correct or remove it in "
                "crdb-federation:members (full names, organization/project/stack); if it is new, its operator runs "
                "its first `pulumi up` (or python -m federation join) before the seed signs it; or check "
                "PULUMI_BACKEND_URL. Then run the seed again.")
    if missing == references.seed_stack:
        return (f"{stack}: the stack {missing} that it reads (crdb-federation:seedStack) does not exist in this "
                f"state backend, {_LATER} Bring the seed up first (python -m federation join does, with the "
                "seed's secrets), or correct seedStack, or check PULUMI_BACKEND_URL; then run the join again.")
    return (f"{stack}: the stack {missing} that it reads does not exist in this state backend, {_LATER} Check the "
            "names in crdb-federation:seedStack (a member) or crdb-federation:members (the seed): a removed or "
            "misspelt stack (full names, organization/project/stack); or check PULUMI_BACKEND_URL; then run it "
            "again.")


def quotas_exceeded(text: str) -> list[str]:
    """The resources (preflight's names; Cinder's for a volume type's own quota) whose quota the cloud said was
    exhausted, in order of mention."""
    found: list[str] = []
    for match in _NEUTRON_QUOTA.finditer(text):
        for name in re.findall(r"[a-z_]+", match["names"]):
            found.append(_NEUTRON_NAMES.get(name, name))
    for match in _NOVA_QUOTA.finditer(text):
        found += match["names"].split(", ")
    found += ["server_group_members" for _ in _NOVA_GROUP_FULL.finditer(text)]
    found += [m["name"] or m["size"] for m in _CINDER_QUOTA.finditer(text)]
    return list(dict.fromkeys(found))


def servers_in_error(text: str) -> list[str]:
    """The IDs of the servers whose build the run saw end in ERROR."""
    return list(dict.fromkeys(m["id"] for m in _BUILD_IN_ERROR.finditer(text)))


def build_faults(text: str, connect: Callable[[], Any]) -> str:
    """Nova's fault message of each server whose build ended in ERROR, a line each, for the words above to
    recognise; "" when there is none, or the cloud cannot be read (the run's own error then stands)."""
    ids = servers_in_error(text)
    if not ids:
        return ""
    try:
        compute = connect().compute
        messages = [(compute.get_server(server_id).fault or {}).get("message") for server_id in ids]
    except Exception:
        return ""
    return "".join(f"\n{message}" for message in messages if message)


@dataclass(frozen=True)
class Headroom:
    resource: str
    limit: int
    used: int
    own: int  # of `used`, what this stack already holds
    need: int  # what this stack takes in all

    @property
    def short(self) -> float:
        free = math.inf if self.limit < 0 else self.limit - self.used
        return self.need - self.own - free


def quota_message(stack: str, headrooms: Iterable[Headroom], unread: Iterable[str] = ()) -> str:
    lines = []
    for h in headrooms:
        raise_by = max(int(h.short), 0)
        lines.append(f"{h.resource}: this stack needs {h.need} in all and holds {h.own}; the quota is {h.limit} with "
                     f"{h.used} in use" + (f", so it is {raise_by} short: ask the cloud's operator to raise the "
                                            f"{h.resource} quota by {raise_by} (to {h.limit + raise_by})"
                                            if raise_by else ", which is enough now (something else freed it)"))
    lines += [f"{resource}: exhausted (its usage could not be read)" for resource in unread]
    return (f"{stack}: the cloud refused a create, its quota exhausted. " + "; ".join(lines) + ". What was made "
            "stays in the stack's state; once the quota is raised (or nodeCount lowered), run "
            f"`python -m federation join {stack}` again: it goes on from there.")


def own_usage(cloud: Any, member: str, server_flavor: Any, agent_flavor: Any) -> dict[str, int]:
    """What the member's resources in the cloud take of each quota: in its project, named as the program names
    them or carrying its member metadata (a count, never a proof: nothing is deleted on it). A volume type's own
    quota is counted under Cinder's name for it, `volumes_<type>` and `gigabytes_<type>`."""
    from .recovery import Ownership

    names = Ownership(member, None, cloud.current_project_id)

    def counted(resource: Any, name: Optional[str] = None) -> bool:
        return names.in_project(resource) and (names.named(name if name is not None else resource.name) or (
            getattr(resource, "metadata", None) or {}).get("crdb-federation-member") == member)

    servers = [s for s in cloud.compute.servers() if counted(s)]
    first = sum(1 for s in servers if s.name == f"{member}-k3s-0")
    server_ids = {s.id for s in servers}
    # Boot volumes are Nova's, unnamed: they are the member's through their attachment.
    volumes = [v for v in cloud.block_storage.volumes() if counted(v)
               or any(a.get("server_id") in server_ids for a in v.attachments or [])]
    prefix = "crdb-federation "  # a floating IP's only name is its description, `crdb-federation <node>`
    usage = {
        "instances": len(servers),
        "cores": first * server_flavor.vcpus + (len(servers) - first) * agent_flavor.vcpus,
        "ram": first * server_flavor.ram_mb + (len(servers) - first) * agent_flavor.ram_mb,
        "volumes": len(volumes),
        "gigabytes": sum(v.size or 0 for v in volumes),
        "floatingip": sum(1 for ip in cloud.network.ips() if (ip.description or "").startswith(prefix)
                          and counted(ip, ip.description[len(prefix):])),
        "ports": sum(1 for p in cloud.network.ports() if counted(p)),
        "security_group": sum(1 for g in cloud.network.security_groups() if counted(g)),
    }
    for volume in volumes:
        if getattr(volume, "volume_type", None):
            usage[f"volumes_{volume.volume_type}"] = usage.get(f"volumes_{volume.volume_type}", 0) + 1
            usage[f"gigabytes_{volume.volume_type}"] = (usage.get(f"gigabytes_{volume.volume_type}", 0)
                                                        + (volume.size or 0))
    return usage


def volume_type_quota(resource: str) -> Optional[tuple[str, str]]:
    """("volumes", "ssd") for Cinder's quota of one volume type, `volumes_ssd`; None for any other quota."""
    base, _, kind = resource.partition("_")
    return (base, kind) if base in ("volumes", "gigabytes") and kind else None


def typed_need(resource: str, openstack: Any, default_type: Optional[str]) -> int:
    """What the stack takes of one volume type's quota: its data volumes are of dataVolumeType (else of the cloud's
    default type), its boot volumes of the default type (Nova asks for none)."""
    base, kind = volume_type_quota(resource) or ("", "")
    data = kind == (openstack.data_volume_type or default_type)
    boot = kind == default_type
    if base == "volumes":
        return openstack.node_count * (data + boot)
    return openstack.node_count * (openstack.data_volume_size * data + openstack.boot_volume_size * boot)


def _typed_usage(cloud: Any, resource: str) -> tuple[int, int]:
    """(limit, in use) of a volume type's own quota: Cinder lists it among the project's quotas, under its name."""
    quotas = cloud.block_storage.get_quota_set(cloud.current_project_id, usage=True)
    return getattr(quotas, resource), (quotas.usage or {}).get(resource, 0)


def quota_headrooms(cloud: Any, settings: Any, resources: Iterable[str]) -> tuple[list[Headroom], list[str]]:
    """The headroom of each exhausted resource, and those whose usage could not be read."""
    from .preflight import CloudChecks, needs, quota_usage

    s = settings.openstack
    flavors = CloudChecks("", settings, cloud).flavors()
    server, agent = flavors.get(s.server_flavor), flavors.get(s.agent_flavor)
    usage = quota_usage(cloud)
    own = own_usage(cloud, settings.cockroach.member, server, agent)
    need = vars(needs(settings, server, agent))
    headrooms, unread = [], []
    for resource in resources:
        if volume_type_quota(resource):
            try:
                default_type = cloud.block_storage.get_type("default").name
                headrooms.append(Headroom(resource, *_typed_usage(cloud, resource), own.get(resource, 0),
                                          typed_need(resource, s, default_type)))
            except Exception:
                unread.append(resource)
        elif resource in usage and resource in own and resource in need:
            limit, used = usage[resource]
            headrooms.append(Headroom(resource, limit, used, own[resource], need[resource]))
        else:
            unread.append(resource)
    return headrooms, unread


# The state backend's words, through gocloud.dev's s3blob and the AWS SDK v2 (pulumi v3.259.0 pkg/backend/diy):
#   read ".pulumi/meta.yaml": blob (key ".pulumi/meta.yaml") (code=Unknown): operation error S3: GetObject, https
#   response error StatusCode: 403, RequestID: …, api error InvalidAccessKeyId: The AWS Access Key Id you provided
#   does not exist in our records.
# (SignatureDoesNotMatch for a wrong secret; AccessDenied where the bucket's policy refuses; a stopped store's
# request ends "…, https response error …" or "dial tcp …: connect: connection refused").
_BACKEND_REFUSED = re.compile(r"operation error S3: (?P<op>\w+), https response error StatusCode: (?P<status>\d+)"
                              r"[^\n]*?api error (?P<code>\w+): (?P<message>[^\n]*)")
_BACKEND_GONE = re.compile(r"operation error S3: (?P<op>\w+), (?:exceeded maximum number of attempts, \d+, )?"
                           r"https response error[^\n]*?(?P<cause>dial tcp [^\n]*?(?:connection refused|i/o timeout|"
                           r"no route to host)|EOF)|operation error S3: (?P<op2>\w+), [^\n]*?(?P<cause2>dial tcp "
                           r"[^\n]*?(?:connection refused|i/o timeout|no route to host))")
_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken")


def backend_fault(stack: str, text: str, backend_url: str) -> Optional[str]:
    """The operator's words for a state backend that refused this operator's credentials, refused an action its
    policy does not allow, or did not answer; None for anything else (pure)."""
    where = backend_url.split("?", 1)[0] or "the state backend"
    refused = _BACKEND_REFUSED.search(text)
    if refused and refused["code"] in _CREDENTIALS:
        return (f"{stack}: the state backend {where} refused this operator's credentials ({refused['code']}: "
                f"{refused['message'].strip()}). Nothing was started. Check that AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) are your own key pair for that bucket")
    if refused and refused["code"] == "AccessDenied":
        return (f"{stack}: the state backend {where} refused {refused['op']} for this operator (AccessDenied: "
                f"{refused['message'].strip()}). Its policy lets each operator write only its own stack: run "
                "this as the operator of that stack")
    gone = _BACKEND_GONE.search(text)
    if gone:
        cause = (gone["cause"] or gone["cause2"] or "").strip()
        # The CLI could not delete its own lock then either (pkg/backend/diy/lock.go Unlock: "manual clean up may be
        # required"): it stays until released.
        lock = (" Its lock stayed in the backend: that next run releases it, as this machine ran the CLI that took it; "
                f"from another machine, `pulumi cancel --stack {stack}` releases it once no run of {stack} is going on."
                if "problem deleting the lock" in text else "")
        return (f"{stack}: the state backend {where} did not answer ({cause}), so the run stopped. What the cloud "
                "made since the last checkpoint the state reached carries the stack's mark: the next "
                f"`scripts/up.sh {stack}` (or `python -m federation join {stack}`) deletes it once the backend answers, "
                f"then goes on.{lock}")
    return None
