"""What went wrong with the cloud during a run, in the operator's words: an OpenStack API that did not answer,
or a quota that ran out halfway. The engine's own message stays in the stack's log; this one names the
service or the quota and what to do.

Recognising is pure (`api_outage`, `quotas_exceeded`); the quota's headroom is read from the cloud.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

# The openstack provider's client wraps its transport in gophercloud/utils' RoundTripper, which words a request
# that got no answer as (v2 client/client.go RoundTrip; max_retries 0 by default, and it retries at once):
#   Post "http://127.0.0.1:9696/v2.0/ports": OpenStack connection error, retries exhausted. Aborting. Last error
#   was: dial tcp 127.0.0.1:9696: connect: connection refused
# and gophercloud an unexpected status as: Expected HTTP response code [201] when accessing [POST http://…], but
# got 503 instead.
_UNANSWERED = re.compile(r'\b(?:Get|Post|Put|Patch|Delete|Head) "(?P<url>https?://[^"\s]+)": '
                         r"(?:OpenStack connection error, retries exhausted\. Aborting\. Last error was: )?(?P<cause>"
                         r"dial tcp [^\s]+: connect: connection refused|EOF|read tcp [^\n]*?connection reset by peer"
                         r"|[^\n]*?i/o timeout|[^\n]*?no route to host)")
_UNAVAILABLE = re.compile(r"when accessing \[(?:[A-Z]+) (?P<url>https?://[^\]\s]+)\], but got (?P<code>50[0234])")

# The three services' words for an exhausted quota, and the preflight's name for each resource
# (federation/preflight.py Needs). Neutron: "Quota exceeded for resources: ['floatingip']."; Nova: "Quota
# exceeded for instances: Requested 1, but already used 2 of 2 instances"; Cinder: "Maximum number of volumes
# allowed (4) exceeded for quota 'volumes'." and "… exceeds allowed gigabytes quota".
_NEUTRON_QUOTA = re.compile(r"Quota exceeded for resources: \[(?P<names>[^\]]*)\]")
_NOVA_QUOTA = re.compile(r"Quota exceeded for (?P<name>instances|cores|ram|server_group_members|server_groups)\b")
_CINDER_QUOTA = re.compile(r"exceeded for quota '(?P<name>volumes|gigabytes)'|exceeds allowed (?P<size>gigabytes) quota")
_NEUTRON_NAMES = {"port": "ports"}

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


def api_outage(text: str) -> Optional[ApiOutage]:
    """The first OpenStack request of the run that got no answer (or a 5xx), if any."""
    for pattern in (_UNANSWERED, _UNAVAILABLE):
        match = pattern.search(text)
        if match:
            cause = match.groupdict().get("cause") or f"HTTP {match['code']}"
            return ApiOutage(match["url"], cause.strip())
    return None


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
    what = (f"the cloud's {SERVICE_WORDS.get(service[0], service[0] + ' API')}" if service else "a cloud API")
    named = f" ({service[1]})" if service and service[1] and service[1].lower() not in what.lower() else ""
    return (f"{stack}: {what}{named} did not answer at {_base(outage.url)} ({outage.cause}), so the run stopped. "
            "What it had made is in the stack's state (a create whose answer was lost is found and deleted as an "
            "orphan by the next join); once the service answers again, "
            f"run `python -m federation join {stack}` (or `pulumi up`) again: it goes on from there.")


# The engine's words for a StackReference to a stack the backend does not have.
_UNKNOWN_STACK = re.compile(r'unknown stack "(?P<stack>[^"]+)"')


def missing_stack_message(stack: str, text: str) -> Optional[str]:
    match = _UNKNOWN_STACK.search(text)
    if not match:
        return None
    return (f"{stack}: the stack {match['stack']} that it reads (crdb-federation:seedStack) does not exist in this "
            "state backend, so the run stopped (what it had made is in the stack's state; the next run completes "
            "it). Bring the seed up first (python -m federation join does, with the "
            "seed's secrets), or correct seedStack, or check PULUMI_BACKEND_URL; then run the join again.")


def quotas_exceeded(text: str) -> list[str]:
    """The resources (preflight's names) whose quota the cloud said was exhausted, in order of mention."""
    found: list[str] = []
    for match in _NEUTRON_QUOTA.finditer(text):
        for name in re.findall(r"[a-z_]+", match["names"]):
            found.append(_NEUTRON_NAMES.get(name, name))
    found += [m["name"] for m in _NOVA_QUOTA.finditer(text)]
    found += [m["name"] or m["size"] for m in _CINDER_QUOTA.finditer(text)]
    return list(dict.fromkeys(found))


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
    """What the member's resources in the cloud (named or tagged as the program makes them) take of each quota."""
    from .recovery import mine

    servers = [s for s in cloud.compute.servers() if mine(member, s.name, s.metadata)]
    first = sum(1 for s in servers if s.name == f"{member}-k3s-0")
    server_ids = {s.id for s in servers}
    # Boot volumes are Nova's, unnamed: they are the member's through their attachment.
    volumes = [v for v in cloud.block_storage.volumes() if mine(member, v.name, v.metadata)
               or any(a.get("server_id") in server_ids for a in v.attachments or [])]
    ports = [p for p in cloud.network.ports() if mine(member, p.name)]
    return {
        "instances": len(servers),
        "cores": first * server_flavor.vcpus + (len(servers) - first) * agent_flavor.vcpus,
        "ram": first * server_flavor.ram_mb + (len(servers) - first) * agent_flavor.ram_mb,
        "volumes": len(volumes),
        "gigabytes": sum(v.size or 0 for v in volumes),
        "floatingip": sum(1 for ip in cloud.network.ips() if mine(member, None, description=ip.description or "")),
        "ports": len(ports),
        "security_group": sum(1 for g in cloud.network.security_groups() if mine(member, g.name)),
    }


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
        if resource in usage and resource in own and resource in need:
            limit, used = usage[resource]
            headrooms.append(Headroom(resource, limit, used, own[resource], need[resource]))
        else:
            unread.append(resource)
    return headrooms, unread
