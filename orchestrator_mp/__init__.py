"""orchestrator_mp: a lock-free process orchestrator on embedded Redis.

Worker processes share nothing but atomic Redis operations: each owns a
partition of the keyspace, claims tasks into its own in-flight list, and settles
them with one atomic step that counts each task exactly once.

Importing the package changes nothing in the application: no loguru sink is added
or removed (the package's records are disabled until ``logger.enable("orchestrator_mp")``,
see :mod:`.log`) and no task is registered (the demo task is the CLI's).
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import keys
from .config import Settings
from .database import open_state
from .demo import DEMO_TASK, demo
from .exceptions import (
    BackendFull,
    BackendUnavailable,
    ConfigurationError,
    DatabaseInUse,
    Fenced,
    LockTimeout,
    OrchestratorError,
    PayloadError,
    ServerError,
    ServerNotRunnable,
    StateError,
    SupervisorClosed,
    TaskError,
    TaskFailed,
    UnknownTaskError,
    WorkerDied,
)
from .executor import OrchestratorExecutor
from .handles import TaskHandle
from .models import Outcome, Task
from .orchestrator import ContinuousOrchestrator
from .registry import get_task, register_task, registered_names, task
from .server import EmbeddedServer
from .state import (
    FileStateManager,
    RedisEnabledStateManager,
    RedisLockFreeStateManager,
    StateManager,
    create_state_manager,
)

__all__ = [
    "__version__",
    "keys",
    "Settings",
    "ContinuousOrchestrator",
    "OrchestratorExecutor",
    "TaskHandle",
    "open_state",
    "EmbeddedServer",
    "StateManager",
    "RedisLockFreeStateManager",
    "RedisEnabledStateManager",
    "FileStateManager",
    "create_state_manager",
    "Task",
    "Outcome",
    "task",
    "register_task",
    "get_task",
    "registered_names",
    "DEMO_TASK",
    "demo",
    "OrchestratorError",
    "ConfigurationError",
    "TaskError",
    "UnknownTaskError",
    "PayloadError",
    "TaskFailed",
    "StateError",
    "Fenced",
    "BackendFull",
    "BackendUnavailable",
    "LockTimeout",
    "ServerError",
    "ServerNotRunnable",
    "DatabaseInUse",
    "WorkerDied",
    "SupervisorClosed",
]
