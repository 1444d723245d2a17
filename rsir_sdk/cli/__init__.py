"""The ``rsir`` command: index archives, search, evaluate, inspect; train and quantize (extra).

    rsir info BUNDLE
    rsir collections --uri ./rsir.db
    rsir index BUNDLE ARCHIVE --uri ./rsir.db --collection scenes [--label-from parent]
    rsir index BUNDLE --learned --uri ./rsir.db --collection scenes
    rsir search BUNDLE IMAGE --uri ./rsir.db --collection scenes -k 10 [--json] [--html out.html]
                [--appearance]
    rsir duplicates BUNDLE --uri ./rsir.db --collection scenes [--radius R] --format csv|json
                    [--out FILE]
    rsir eval BUNDLE [--data DIR] [--uri URI]
    rsir drop COLLECTION --uri ./rsir.db --yes
    rsir train ahcl|milan ... / rsir quantize ... / rsir quickstart   (entry points: rsir-train)

Exit status: 0 done; 1 error (one line on stderr); 2 bad arguments or input (one line); 3
finished but some images failed (``rsir index``: see the report file; ``rsir eval``: left
out); 130 interrupted (``rsir index`` resumes when run again); 141 the output's reader went away
(``| head``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

from ..errors import InvalidInputError, RasterRuleError, RsirError
from . import admin, authoring, duplicates, evaluate, index, search
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    TerminalFormatter,
    UsageError,
    ignore_more_interrupts,
    stop_signals,
    warn,
)

#: the runtime's own commands; a plugin in ``rsir.commands`` cannot replace them
RUNTIME_COMMANDS = frozenset({"info", "collections", "drop", "index", "search", "duplicates",
                              "eval", "serve"})


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``rsir <command>: <what is wrong>`` and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        warn(f"{self.prog}: {one_line(message)} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


def one_line(text: object) -> str:
    """``text`` on one line (line breaks in a message shown as spaces)."""
    return " ".join(str(text).split("\n")).strip()


def _tolerant_output() -> None:
    """Print names that are not valid UTF-8 (lone surrogates) with escapes, not a traceback."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change (closed, custom)
                pass


#: the exit status of a command whose output's reader went away (128 + SIGPIPE, as a shell
#: reports a tool killed by it)
EXIT_BROKEN_PIPE = 141


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout to redirect
        pass


def build_parser() -> argparse.ArgumentParser:
    """The ``rsir`` argument parser (training commands are forwarded before parsing)."""
    parser = _Parser(
        prog="rsir", description=(__doc__ or "").split("\n")[0],
        epilog="exit status: 0 done, 1 error, 2 bad arguments, 3 some images failed, "
               "130 interrupted (re-run to resume)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    admin.add_parsers(sub)
    index.add_parser(sub)
    search.add_parser(sub)
    duplicates.add_parser(sub)
    evaluate.add_parser(sub)
    _add_serve(sub)
    _add_plugins(sub)
    return parser


def _add_plugins(sub: argparse._SubParsersAction) -> None:
    """Commands of other distributions (entry-point group ``rsir.commands``: train, quantize, ...).

    They are listed here for ``rsir --help`` only; :func:`main` forwards them before parsing.
    """
    taken = set(sub.choices)
    for name, ep in authoring.commands().items():
        if name not in taken:
            p = sub.add_parser(name, help=authoring.help_text(ep), add_help=False)
            p.set_defaults(func=None)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    """``rsir serve`` (its module imports FastAPI and uvicorn only when it runs)."""
    from ..serve import cli as serve_cli

    p = sub.add_parser("serve", help="serve a collection over HTTP (search page, API, edge codes)",
                       description=(serve_cli.__doc__ or "").split("\n")[0])
    serve_cli.add_arguments(p)
    p.set_defaults(func=serve_cli.run)


def _forwarded_command(argv: list[str]) -> tuple[str, list[str]] | None:
    """The training command of ``argv`` and its arguments, or None for a runtime command.

    ``rsir -v train ...`` works as ``rsir -v index ...`` does: a leading ``-v``/``--verbose``
    is passed on to the command as ``--verbose`` (every ``rsir.commands`` command takes it).
    """
    at = 0
    while at < len(argv) and argv[at] in ("-v", "--verbose"):
        at += 1
    if at < len(argv) and argv[at] in authoring.names() - RUNTIME_COMMANDS:
        return argv[at], argv[at + 1 :] + (["--verbose"] if at else [])
    return None


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed, where a command's optional positional (``rsir index BUNDLE ARCHIVE``)
    may also follow its options: argparse fills an optional positional from the first run of
    positionals only (``BUNDLE`` alone leaves ``ARCHIVE`` empty) and calls a later one
    unrecognized. A command names that positional with ``set_defaults(late_positional=...)``."""
    args, extra = parser.parse_known_args(argv)
    late = getattr(args, "late_positional", None)
    if late and getattr(args, late, None) is None and extra and not extra[0].startswith("-"):
        setattr(args, late, extra.pop(0))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rsir`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # milvus-lite 2.5 imports pkg_resources, whose deprecation warning means nothing to users
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    _tolerant_output()
    forwarded = _forwarded_command(argv)
    if forwarded is not None:
        return authoring.run(forwarded[0], forwarded[1])
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # a bad argument (one line already printed) or --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = logging.StreamHandler()
    handler.setFormatter(TerminalFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        handlers=[handler])
    func: Callable[[argparse.Namespace], int] = args.func
    with stop_signals():
        return _run(func, args)


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command: its errors as one line and an exit status."""
    try:
        status = int(func(args) or 0)
        sys.stdout.flush()  # a reader gone away fails here, not in Python's flush at exit
        return status
    except (UsageError, RasterRuleError, InvalidInputError) as exc:
        warn(f"rsir {args.command}: {one_line(exc)}")
        return EXIT_USAGE
    except RsirError as exc:
        warn(f"rsir {args.command}: {one_line(exc)}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        ignore_more_interrupts()
        warn(f"\nrsir {args.command}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (rsir info ... | head): as other tools do
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: one line unless -v asks for the traceback
        if args.verbose:
            raise
        warn(f"rsir {args.command}: unexpected {type(exc).__name__}: {one_line(exc)[:300]} "
             f"(re-run as rsir -v {args.command} ... for the traceback)")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
