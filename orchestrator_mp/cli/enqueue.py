"""``enqueue``: submit tasks to a database, whether or not an orchestrator runs on it."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..database import open_state
from ..exceptions import PayloadError, UnknownTaskError
from ..log import configure as configure_logging
from ..models import Task
from ..registry import is_registered, shard_key_for
from .common import (
    EXIT_OK,
    add_common_options,
    import_task_modules,
    json_value,
    positive_int,
    say,
    settings_from,
)


def add_parser(commands: Any) -> None:
    enqueue = commands.add_parser("enqueue", help="submit one task (works whether or not the orchestrator runs)")
    add_common_options(enqueue)
    enqueue.add_argument("task", metavar="TASK", help="registered task name")
    enqueue.add_argument("--args", type=json_value(list), default=[], metavar="JSON", help="positional args (JSON list)")
    enqueue.add_argument("--kwargs", type=json_value(dict), default={}, metavar="JSON", help="keyword args (JSON object)")
    enqueue.add_argument("--count", type=positive_int, default=1, metavar="N", help="submit N copies")
    enqueue.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (repeatable): a rate-limited or capped task then carries its limit's shard key",
    )
    enqueue.add_argument("--json", action="store_true", help="print the task ids as JSON")
    enqueue.set_defaults(handler=cmd_enqueue)


def cmd_enqueue(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level if not args.json else "WARNING", settings.log_json)
    import_task_modules(args.imports)
    if not is_registered(args.task):
        if args.imports:
            # The modules that define the tasks were imported: the name is surely wrong.
            raise UnknownTaskError(args.task)
        say(
            f"warning: task {args.task!r} is not registered here, so its name is not checked "
            "(--import MODULE checks it); a worker that does not know it dead-letters it as unknown_task"
        )
    tasks = [
        Task(
            name=args.task,
            args=tuple(args.args),
            kwargs=args.kwargs,
            want_result=True,
            shard_key=shard_key_for(args.task),
        )
        for _ in range(args.count)
    ]
    raws = [t.to_json() for t in tasks]
    for raw in raws:
        if len(raw) > settings.max_payload_bytes:
            raise PayloadError({"name": args.task}, f"task is {len(raw)} bytes, over {settings.max_payload_bytes}")
    with open_state(settings, role="enqueue") as state:
        state.submit(raws)
    ids = [t.id for t in tasks]
    if args.json:
        print(json.dumps({"task_ids": ids, "task": args.task}))
    else:
        print("\n".join(ids))
    return EXIT_OK


