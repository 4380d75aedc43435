"""python -m tests.integration.standin: the k3s stand-in for the local cloud's servers (README: Testing).

    python -m tests.integration.standin --state DIR [--only MEMBER ...]

Runs until interrupted (the integration tier starts it for its session). Each stack's control plane writes
its logs under DIR/<member>/run; DIR/<member>/report.json names its admin kubeconfig. Run it inside the
tests' network namespace, as root: it adds each server 0's public address to the loopback interface.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .controlplane import Binaries
from .watcher import Watcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.standin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, required=True, help="datastores, logs and reports")
    parser.add_argument("--binaries", type=Path, required=True, help="scripts/install-kubernetes.sh's directory")
    parser.add_argument("--cloud", default="localcloud", help="clouds.yaml entry (OS_CLIENT_CONFIG_FILE)")
    parser.add_argument("--only", action="append", default=[], help="only these members (default: every one)")
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if os.geteuid() != 0:
        print("the stand-in adds addresses to the loopback interface: run it as root, in the tests' namespace",
              file=sys.stderr)
        return 2
    import openstack

    cloud = openstack.connect(cloud=args.cloud)
    watcher = Watcher(cloud, args.state, Binaries(args.binaries), only=set(args.only))
    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            try:
                watcher.round()
            except Exception as error:  # a cloud API that drops out (tests/integration/test_faults.py) stops no stand-in
                logging.warning("a round failed, the next one tries again: %s", error)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        watcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
