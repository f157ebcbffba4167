"""RQ's no-op task, in a module that imports nothing.

RQ's default ``Worker`` forks a work horse per job, and the horse imports the job's
module if the worker had not: a task module that pulled in this benchmark (and with
it orchestrator_mp) would cost ~150 ms per job, which measures our imports, not RQ.
"""


def noop(index: int) -> None:
    """The no-op task."""
    return None
