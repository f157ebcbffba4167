"""Peers, side by side: the same no-op workload on orchestrator_mp, Celery, RQ,
Dramatiq, Huey and ``multiprocessing.Pool`` (``python -m benchmarks.peers``; see
``run.py``). One module per peer: its no-op task, how its 2 workers start, and how
completion of all tasks is detected; ``common.py`` holds what they share.
"""
