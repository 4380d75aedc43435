"""The policy pack on the real engine: a shipped stack passes it; the same stack with a program changed
to open SQL to the world and boot without a config drive fails the preview, naming both rules."""

from __future__ import annotations

STACK = "otc"


def _policy_preview(project):
    # Without its virtualenv the language host tries to make one inside the test namespace (no network) and
    # the preview hangs instead of failing.
    assert (project.directory / "policy" / "venv" / "bin" / "python").exists(), (
        "missing: policy/venv, the policy pack's virtualenv (scripts/policy-venv.sh makes it; test.sh runs it)")
    project.select("seed")  # the member's seed stack exists, with no outputs yet, as in a pull request
    project.select(STACK)
    return project.run("preview", "--policy-pack", "policy", stack=STACK, check=False, timeout=900)


def test_a_shipped_stack_passes_the_policy_pack(project):
    done = _policy_preview(project)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    assert "crdb-federation" in report and "mandatory" not in report.lower()


def test_a_deliberately_broken_program_fails_the_preview_naming_each_rule(project):
    security = project.directory / "components" / "security.py"
    kubernetes = project.directory / "components" / "kubernetes.py"
    originals = {path: path.read_text() for path in (security, kubernetes)}
    security.write_text(originals[security].replace(
        "    return rules\n",
        '    rules.append(IngressRule("sql", COCKROACH_SQL_PORT, "tcp", "0.0.0.0/0", "SQL from anywhere"))\n'
        "    return rules\n"))
    kubernetes.write_text(originals[kubernetes].replace("config_drive=True", "config_drive=False"))
    try:
        done = _policy_preview(project)
    finally:
        for path, text in originals.items():
            path.write_text(text)
    report = done.stdout + done.stderr
    print(report)  # the report, for the record (pytest -s)
    assert done.returncode != 0, report[-4000:]
    for rule, why in (("no-world-open-sensitive-port", "CockroachDB SQL (26258-26258) open to 0.0.0.0/0"),
                      ("servers-boot-from-a-config-drive", "without a config drive")):
        assert rule in report and why in report, (rule, report[-4000:])
