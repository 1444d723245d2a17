"""``rsir train``, ``rsir quantize``, ``rsir quickstart``: commands other distributions provide.

Training and quantization live in their own distribution (``rsir-train``, package
``rsir_train``; the ``export/`` folder of the repository), so that the runtime pulls neither
torch nor onnx. That distribution declares its commands in the entry-point group
``rsir.commands`` (name = the command, value = a function taking the arguments after the
command and returning the exit status; ``rsir -v <command>`` passes ``--verbose`` last, so a
command takes that option); ``rsir`` lists and runs whatever the group holds, so a
command is added by installing a package, not by editing this one. When the training package
is not installed, ``rsir train`` (and the other names in :data:`TRAINING_COMMANDS`) says in one
line what to install.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Callable, Sequence

from .common import EXIT_USAGE, warn

#: the entry-point group other distributions declare their ``rsir`` commands in
GROUP = "rsir.commands"
#: names the training package provides; only used to say what to install when they are absent
TRAINING_COMMANDS = ("train", "quantize", "quickstart")
INSTALL_HINT = ("pip install rsir-train (from a checkout of rsir-sdk: pip install -e ./export); "
                "install torch first (pip install torch) to pick its CPU or CUDA build")


def commands() -> dict[str, EntryPoint]:
    """The commands installed in :data:`GROUP`, by name (the first of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def names() -> set[str]:
    """Every name ``rsir`` forwards here: the installed commands and the training ones."""
    return set(commands()) | set(TRAINING_COMMANDS)


def help_text(ep: EntryPoint) -> str:
    """One line for ``rsir --help``: the first line of the command function's docstring.

    Loading the function imports only its module (the training package imports torch when a
    command runs, not when its command line module is imported).
    """
    dist = ep.dist.name if ep.dist is not None else "another package"
    try:
        func = ep.load()
    except Exception as exc:  # a broken plugin must not break `rsir --help`
        return f"({dist}: cannot be loaded: {type(exc).__name__}: {exc})"
    first = (getattr(func, "__doc__", None) or "").strip().split("\n")[0].rstrip(".")
    first = first[:1].lower() + first[1:]  # the runtime's help lines start in lower case
    return f"{first or ep.name} ({dist})"


def _load(name: str) -> Callable[[list[str]], int] | None:
    """The function of command ``name``, or None after one line saying what to install."""
    ep = commands().get(name)
    if ep is None:
        warn(f"rsir {name} needs the training package: {INSTALL_HINT}")
        return None
    top = ep.module.split(".")[0]
    try:
        func: Callable[[list[str]], int] = ep.load()
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing is not None and top.startswith(missing.split(".")[0]):
            # metadata left behind without the package itself (e.g. python -S, a broken install)
            warn(f"rsir {name} needs the training package ({top} cannot be imported): {INSTALL_HINT}")
        else:  # torch, onnx or another dependency missing under an installed package
            warn(f"rsir {name} needs the training package's dependencies ({missing or exc} "
                 f"is missing): {INSTALL_HINT}")
        return None
    return func


def run(command: str, argv: Sequence[str]) -> int:
    """Run ``rsir <command> argv...`` through the function its entry point names."""
    func = _load(command)
    if func is None:
        return EXIT_USAGE
    try:
        return int(func(list(argv)) or 0)
    except SystemExit as exc:  # --help, or a bad argument (the command printed one line)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
