"""Log records that the command line's progress printer shows too, marked so it can drop them.

Why: the trainers report progress twice on purpose, as events to the ``progress`` callback
(what ``rsir train`` prints, one short line each) and as log records (what a program that trains
through the Python API and configures logging sees). On the command line, with logging at INFO,
each outer iteration, selection step and feature-cache hit would otherwise appear twice. The
records carry ``extra=SHOWN``; :func:`drop_shown` is the filter ``rsir train`` puts on its log
handlers while its printer is on.
"""

from __future__ import annotations

import logging

__all__ = ["SHOWN", "drop_shown"]

#: ``extra=`` of a log record whose content is also a progress event the printer shows
SHOWN = {"rsir_progress": True}


def drop_shown(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop) for the records marked :data:`SHOWN`."""
    return not getattr(record, "rsir_progress", False)
