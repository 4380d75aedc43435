"""Peak memory of everything a command sets running on this machine, by kind: the k3s stand-ins' control
planes apart from the local OpenStack, the Pulumi engines (CLI, language hosts, plugins) and the rest.

    venv/bin/python bench/tier_memory.py [--every 2] -- bash scripts/test.sh

Samples every process's PSS (shared pages counted once) while the command runs, since the local cloud's
services detach from the command's own process tree; prints the peak of each kind and of the total, and
the wall time. Processes running before the command started are left out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

GIB = 1024 ** 3
KINDS = (
    ("control planes", ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kine", "kwok", "kubelet")),
    ("local OpenStack", ("uwsgi", "nova-", "cinder-", "neutron", "mariadbd", "beam.smp", "epmd", "glance")),
    ("Pulumi engines", ("pulumi",)),
)


def kind_of(command: str) -> str:
    for kind, words in KINDS:
        if any(word in command for word in words):
            return kind
    return "other"


def processes() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found


def pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="also write the peaks here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    before = set(processes())
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            totals: dict[str, int] = {}
            for pid, line in processes().items():
                if pid not in before:
                    kind = kind_of(line)
                    totals[kind] = totals.get(kind, 0) + pss(pid)
            totals["total"] = sum(totals.values())
            for kind, value in totals.items():
                peaks[kind] = max(peaks.get(kind, 0), value)
            done.wait(args.every)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    code = subprocess.call(command)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    print(f"wall {elapsed:.0f} s, exit {code}; peak PSS by kind (each kind's own peak):")
    for kind in ("control planes", "local OpenStack", "Pulumi engines", "other", "total"):
        print(f"  {kind:16} {peaks.get(kind, 0) / GIB:6.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps({"wall_seconds": elapsed, "exit": code, "peak_pss_bytes": peaks}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
