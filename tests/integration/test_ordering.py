"""Per-key ordering with real workers being killed and replaced during the run."""
from __future__ import annotations

import random
import threading
import time

import pytest

from orchestrator_mp import ContinuousOrchestrator
from orchestrator_mp.exceptions import ConfigurationError
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.helpers import settings_for, sigkill_worker

pytestmark = pytest.mark.slow


def _runs(path):
    starts, ends = {}, {}
    for line in open(path):
        kind, key, seq, at, pid = line.split()
        (starts if kind == "start" else ends).setdefault(key, []).append((float(at), int(seq), int(pid)))
    return starts, ends


@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_keys_keep_their_order_through_worker_kills(db_path, tmp_path, shards):
    """8 keys x 25 tasks, 4 workers, 6 SIGKILLs: per key, runs never overlap and finish in order."""
    log = str(tmp_path / "runs.log")
    keys = [f"repo-{k}" for k in range(8)]
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=4, shards=shards)) as orch:
        for seq in range(25):
            for key in keys:
                orch.submit_with("tests.ordered", (log, key, seq, 5), partition_key=key, result=False)
        kills = []

        def chaos():
            rng = random.Random(3)
            while len(kills) < 6:
                time.sleep(0.15)
                pids = orch.supervisor.pids()
                if pids:
                    sigkill_worker(pids[rng.choice(sorted(pids))])
                    kills.append(time.time())

        killer = threading.Thread(target=chaos)
        killer.start()
        try:
            assert orch.wait(timeout=120)
        finally:
            killer.join()
        audit = orch.audit()
        workers_used = len(orch.worker_ids())
    starts, ends = _runs(log)
    violations = reruns = 0
    for key in keys:
        finished = [seq for _, seq, _ in sorted(ends[key])]
        # At-least-once: a run that finished but whose worker died before settling it
        # runs again, right away (its successor is still held back).
        distinct = [seq for i, seq in enumerate(finished) if i == 0 or seq != finished[i - 1]]
        reruns += len(finished) - len(distinct)
        assert distinct == list(range(25)), (key, finished)  # in submission order
        runs = sorted(starts[key])
        ended = {(seq, pid): at for at, seq, pid in ends[key]}
        for (_started_at, seq, pid), (next_start, next_seq, _) in zip(runs, runs[1:], strict=False):
            assert next_seq >= seq, (key, seq, next_seq)  # never overtaken
            end = ended.get((seq, pid))
            if end is not None and next_start < end:
                violations += 1  # two runs of one key at once
    print(f"\nordering ({'sharded' if shards else 'plain'}): 8 keys x 25 tasks, {len(kills)} kills, {workers_used} workers used, "
          f"ordering violations {violations}, re-runs after a kill {reruns}, "
          f"requeued {audit['counters']['total_requeued']}")
    assert violations == 0
    assert audit["ok"], audit


def test_bad_partition_keys_are_refused(db_path):
    """A partition key outside the documented characters is a clear error."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        with pytest.raises(ConfigurationError, match="partition_key"):
            orch.submit_with("tests.add", (1, 2), partition_key="has space")
