"""``result``: print a task's stored outcome (waiting for it with ``--wait``)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..database import open_state
from ..exceptions import ConfigurationError
from ..handles import FINAL
from ..log import configure as configure_logging
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_common_options,
    non_negative_float,
    say,
    settings_from,
)

EXIT_NOT_FINISHED = 75  # EX_TEMPFAIL: ask again later


def add_parser(commands: Any) -> None:
    result = commands.add_parser("result", help="a task's result, error, or where it is now")
    add_common_options(result)
    result.add_argument("task_id", metavar="ID", help="the task id (printed by enqueue)")
    result.add_argument("--wait", type=non_negative_float, default=0.0, metavar="S",
                        help="wait up to S seconds for the task to finish (blocking read)")
    result.add_argument("--json", action="store_true", help="print the stored outcome as JSON")
    result.set_defaults(handler=cmd_result)


def cmd_result(args: argparse.Namespace) -> int:
    """Exit 0 with the result; 1 if the task failed; 75 if it has not finished yet."""
    settings = settings_from(args)
    configure_logging("WARNING", settings.log_json)
    with open_state(settings, role="result") as state:
        stored = state.wait_result(args.task_id, args.wait) if args.wait else state.get_result(args.task_id)
        status = stored["status"] if stored else state.task_status(args.task_id)[0]
    if status == "unknown":
        raise ConfigurationError(
            f"no task {args.task_id}: never submitted with a result, or its result expired "
            f"(kept {settings.result_ttl_s:.0f} s)"
        )
    if args.json:
        print(json.dumps(stored if stored else {"status": status}, indent=2))
    elif stored and status == "done":
        print(json.dumps(stored.get("result")))
    elif stored:
        say(f"task {args.task_id} {status} ({stored.get('category')}): {stored.get('message')}")
        if stored.get("traceback"):
            say(stored["traceback"].rstrip())
    else:
        say(f"task {args.task_id} is {status}")
    if status == "done":
        return EXIT_OK
    return EXIT_FAILURE if status in FINAL else EXIT_NOT_FINISHED
