"""The command line's one log handler (:mod:`spai_cli.console`): the library's messages as plain lines on stderr,
export's with the time of day, other packages' warnings only; nothing of it left once the command returns."""

from __future__ import annotations

import io
import logging
import re

from spai_cli.console import console_logging


def _state() -> tuple:
    spai = logging.getLogger("spai")
    return spai.level, spai.propagate, spai.handlers[:], logging.getLogger().handlers[:]


def test_messages_are_plain_stderr_lines_and_nothing_stays(capsys) -> None:
    before = _state()
    with console_logging():
        logging.getLogger("spai.infer.job").info("route: ort-int8 (%s)", "why")
        logging.getLogger("export.pipeline").info("loading %s ...", "x.pth")
        logging.getLogger("somelib").info("not shown")
        logging.getLogger("somelib").warning("a warning")
    logging.getLogger("spai.infer.job").info("after the command: not shown")
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0] == "route: ort-int8 (why)" and lines[2:] == ["a warning"]
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] loading x\.pth \.\.\.", lines[1])
    assert _state() == before


def test_a_command_that_keeps_its_own_handlers_is_shown_once_and_cleaned_up(capsys) -> None:
    """``spai train`` gives the ``spai`` logger handlers of its own and stops its propagation (train.log): its lines
    are not shown twice, and an in-process run leaves neither behind for the next command."""
    before, own = _state(), io.StringIO()
    with console_logging():
        spai = logging.getLogger("spai")
        spai.addHandler(logging.StreamHandler(own))
        spai.propagate = False
        logging.getLogger("spai.train.trainer").info("epoch 1")
    assert own.getvalue() == "epoch 1\n" and capsys.readouterr().err == ""
    assert _state() == before
    with console_logging():
        logging.getLogger("spai.train.trainer").info("the next command")
    assert capsys.readouterr().err == "the next command\n" and own.getvalue() == "epoch 1\n"
