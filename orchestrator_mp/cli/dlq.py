"""``dlq``: list, retry and purge dead letters (tasks that failed for good, with why)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..database import open_state
from ..exceptions import ConfigurationError
from ..log import configure as configure_logging
from .common import EXIT_OK, add_common_options, positive_int, settings_from


def add_parser(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="dead letters: list, retry, purge")
    actions = dlq.add_subparsers(dest="dlq_action", metavar="ACTION", required=True, parser_class=type(dlq))

    listing = actions.add_parser("list", help="show dead letters, newest first")
    add_common_options(listing)
    listing.add_argument("--limit", type=positive_int, default=50, metavar="N", help="show at most N (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object")
    listing.set_defaults(handler=cmd_list)

    retry = actions.add_parser("retry", help="send dead letters back to the queue as fresh submissions")
    add_common_options(retry)
    retry.add_argument("task_ids", nargs="*", metavar="ID", help="task ids to retry")
    retry.add_argument("--all", action="store_true", help="retry every dead letter")
    retry.add_argument("--json", action="store_true", help="one JSON object")
    retry.set_defaults(handler=cmd_retry)

    purge = actions.add_parser("purge", help="discard dead letters")
    add_common_options(purge)
    purge.add_argument("task_ids", nargs="*", metavar="ID", help="task ids to discard")
    purge.add_argument("--all", action="store_true", help="discard every dead letter")
    purge.add_argument("--json", action="store_true", help="one JSON object")
    purge.set_defaults(handler=cmd_purge)


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "raw"}


def cmd_list(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging("WARNING", settings.log_json)
    with open_state(settings, role="dlq") as state:
        entries = state.dead_letters(limit=args.limit)
        total = state.queue_depths([])["dead_letter"]
    if args.json:
        print(json.dumps({"total": total, "entries": [_public(e) for e in entries]}, indent=2))
        return EXIT_OK
    print(f"{total} dead letter(s)" + (f", newest {len(entries)} shown" if total > len(entries) else ""))
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry.get("failed_at") or 0)))
        print(f"{entry.get('task_id') or '-':<32}  {entry.get('name') or '-':<20} {entry.get('category'):<12} {when}")
        print(f"    {entry.get('message', '')}")
    return EXIT_OK


def _select(args: argparse.Namespace, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if args.all == bool(args.task_ids):
        raise ConfigurationError(f"dlq {args.dlq_action}: give task ids or --all (not both)")
    if args.all:
        return entries
    wanted = set(args.task_ids)
    chosen = [e for e in entries if e.get("task_id") in wanted]
    missing = wanted - {e.get("task_id") for e in chosen}
    if missing:
        raise ConfigurationError(f"dlq {args.dlq_action}: no dead letter with id {', '.join(sorted(missing))}")
    return chosen


def cmd_retry(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging("WARNING", settings.log_json)
    with open_state(settings, role="dlq") as state:
        chosen = _select(args, state.dead_letters(limit=None))
        moved = state.retry_dead_letters(chosen)
    skipped = len(chosen) - moved
    if args.json:
        print(json.dumps({"retried": moved, "skipped": skipped}))
    else:
        print(f"{moved} dead letter(s) sent back to the queue" + (f", {skipped} skipped (not tasks)" if skipped else ""))
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging("WARNING", settings.log_json)
    with open_state(settings, role="dlq") as state:
        if args.all and not args.task_ids:
            removed = state.purge_dead_letters(None)
        else:
            removed = state.purge_dead_letters(_select(args, state.dead_letters(limit=None)))
    if args.json:
        print(json.dumps({"purged": removed}))
    else:
        print(f"{removed} dead letter(s) discarded", file=sys.stdout)
    return EXIT_OK
