"""What scripts/up.sh asks of the tool around one operator's own `pulumi up` of its own stack, with that operator's
environment alone (its backend credentials, its passphrase, its clouds.yaml):

- `prepare`, before the run: what the tool's own runs start with (runner.PulumiStack.prepare): a lock that a run of
  this machine left and that provably is gone is released, an interrupted run's pending creates are cleared, what a
  failed run made in the cloud and the state lacks is deleted under the stack's lock, servers in ERROR are healed.
  Credentials the backend refuses stop it here, in one line, before anything is made.
- `explain`, after a run that failed: the operator's words for what stopped it (runner.explain_failure), from the
  CLI's error stream and the run's engine event log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

from . import faults
from .locks import StackLocked
from .runner import ROOT, PulumiStack, StackNotInBackend, explain_failure


def prepare(stack: str, say: Callable[[str], None], work_dir: Path = ROOT) -> int:
    """0 when the `up` may start; 2, having said why, when it must not."""
    try:
        PulumiStack(stack, work_dir).prepare(say)
    except StackNotInBackend:
        return 0  # a first `up`: nothing to clear, and scripts/up.sh creates the stack next
    except (faults.CloudFault, StackLocked) as error:
        say(f"error: {error}")
        return 2
    except Exception as error:  # one line, not a traceback; the up does not start on checks that did not run
        say(f"error: {stack}: the checks before its up did not run ({error}); nothing was started")
        return 2
    return 0


def explain(stack: str, errors: Path, say: Callable[[str], None], work_dir: Path = ROOT,
            events: Optional[Path] = None) -> int:
    """Says what stopped a failed run, when the tool knows it; 0 either way (the run's own exit code stands). The
    CLI writes a failed step's error as a diagnostic of the update (stdout), the command's own error to stderr."""
    text = "\n".join([_read(errors), *error_diagnostics(_read(events))])
    words = explain_failure(stack, text, os.environ.get("PULUMI_BACKEND_URL", ""), work_dir) if text.strip() else None
    if words:
        say(f"crdb-federation: {words}")
    return 0


def error_diagnostics(event_log: str) -> list[str]:
    """The messages of an engine event log's error diagnostics (pure; a line cut short is skipped)."""
    found = []
    for line in event_log.splitlines():
        try:
            diagnostic = json.loads(line).get("diagnosticEvent") or {}
        except ValueError:
            continue
        if diagnostic.get("severity") == "error":
            found.append(diagnostic.get("message", ""))
    return found


def _read(path: Optional[Path]) -> str:
    return path.read_text(errors="replace") if path is not None and path.is_file() else ""
