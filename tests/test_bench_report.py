"""bench/join_critical_path.py: a join's phases read off the tool's timeline, and the report's ratios. The numbers
themselves come from the real engine (scripts/bench.sh join); these are the arithmetic on them."""

from bench.join_critical_path import phases_of, ready_seconds, render


def cloud(started: float, runs: list, joined: float, waits: list = ()) -> dict:
    return {"started_at": started, "runs": runs, "waits": list(waits), "phases": {"joined": joined},
            "engine_seconds": sum(b - a for a, b in runs), "seed_wait_seconds": sum(b - a for a, b in waits),
            "elapsed": runs[-1][1] - started}


def test_a_two_step_join_is_ready_in_its_second_up_and_the_gap_is_the_seed_signing():
    row = phases_of(cloud(1.0, [[1.0, 91.0], [116.0, 140.0]], joined=138.0))
    assert row["join"] == 137.0 and row["ready in"] == "second up"
    assert (row["first up"], row["seed signing"], row["second up"]) == (90.0, 25.0, 24.0)


def test_a_signer_join_is_ready_in_its_first_up_and_counts_its_wait_in_it():
    row = phases_of(cloud(0.0, [[0.0, 60.0], [80.0, 95.0]], joined=55.0, waits=[[30.0, 42.5]]))
    assert row["join"] == 55.0 and row["ready in"] == "first up" and row["wait in its up"] == 12.5


def test_a_cloud_that_never_joined_is_timed_by_its_whole_run():
    assert ready_seconds({"started_at": 2.0, "phases": {}, "elapsed": 70.0}) == 70.0


def test_the_report_divides_each_join_by_both_floors():
    floor = {"member": "canonical", "join": 30.0, "engine": 42.0, "seed wait": 0.0, "first up": 42.0,
             "ready in": "first up"}
    results = {"nodes": 1, "seed_up": 48.0, "floors": {"1": floor, "3": {**floor, "join": 60.0}},
               "phases": {"signer (after)": {**floor, "clouds": 4, "join": 72.0, "joins": [70.5, 72.0, 75.25]}},
               "growth": {}}
    [signer] = [line for line in render(results).splitlines() if line.startswith("| signer")]
    assert "| 72.0 | 2.40 | 1.20 | 70.5 / 72.0 / 75.2 |" in signer, signer
