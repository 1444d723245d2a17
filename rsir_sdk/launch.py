"""The ``rsir`` console script: load the command's modules, then run it.

Loading the command line pulls in numpy, Pillow and the store's client (about half a second).
A Ctrl-C in that time would otherwise print an import traceback; here it is one line and
exit status 130, as a Ctrl-C during the command itself.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130


def main() -> int:
    """Entry point of the ``rsir`` console script; returns the exit status."""
    try:
        from .cli import main as run_command

        status = run_command()
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
        sys.stderr.write("\nrsir: interrupted\n")
    # The command has ended and its status is said: a Ctrl-C while Python exits (closing Milvus
    # Lite, joining threads) must neither print a clean-up traceback nor end the process by
    # the signal itself (Python's exit restores the default handler: status -2, no word, after
    # a run that had finished). SIGTERM and SIGKILL still end a stuck exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status
