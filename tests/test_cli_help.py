"""``kma``'s parser: every flag of every subcommand has a help text that says what is
true (``--store`` required where it is), and every argparse mistake is one line
``kma: error: ...`` with exit code 2 (no usage block). In-process: no subprocess, no Ray."""

from __future__ import annotations

import argparse
import re

import pytest

from pipeline.cli import build_parser, main


def _actions(parser):
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def test_every_option_of_every_subcommand_has_a_help_text():
    parser = build_parser()
    assert set(parser.subcommands) == {"sweep", "analyze", "ingest", "compare", "runs", "sync", "depth", "ui"}
    for a in _actions(parser):
        assert a.help and a.help != argparse.SUPPRESS, a
    for name, sub in parser.subcommands.items():
        actions = _actions(sub)
        assert actions, name
        for a in actions:
            assert a.help and a.help.strip() and a.help != argparse.SUPPRESS, (name, a.option_strings or a.dest)
            # the help never claims a default for a required option
            if a.required and a.option_strings:
                assert "required" in a.help and "default" not in a.help, (name, a.option_strings, a.help)


def test_store_help_is_true():
    subs = build_parser().subcommands
    for name, sub in subs.items():
        if name in ("depth", "ui"):   # before training / MLflow's UI: no store
            assert not any("--store" in a.option_strings for a in sub._actions)
            continue
        store = next(a for a in sub._actions if "--store" in a.option_strings)
        if name == "sweep":  # the config's store, else ./kma-store
            assert not store.required and "kma-store" in store.help
        else:
            assert store.required and "required" in store.help and "kma-store" not in store.help


def test_help_pages_render(capsys):
    for name in [None, "sweep", "analyze", "ingest", "compare", "runs", "sync", "depth"]:
        with pytest.raises(SystemExit) as ex:
            main([name, "--help"] if name else ["--help"])
        assert ex.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: kma"), out
    # the flags the issue found without help
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    page = capsys.readouterr().out
    assert re.search(r"--method \{qr,randomized\}\s+compression", page), page


@pytest.mark.parametrize("argv, words", [
    ([], ["required", "COMMAND", "kma --help"]),
    (["bogus"], ["invalid choice", "'bogus'"]),
    (["analyze"], ["required: --store", "kma analyze --help"]),
    (["ingest", "a.pt", "--store", "s"], ["required: --run-id", "kma ingest --help"]),
    (["sweep"], ["required: config", "kma sweep --help"]),
    (["analyze", "--store", "s", "--method", "svd"], ["--method", "invalid choice", "'svd'"]),
    (["analyze", "--store", "s", "--rank", "abc"], ["--rank", "invalid int value", "'abc'"]),
    (["analyze", "--store", "s", "--window", "0.5"], ["--window", "'0.5'"]),
    (["ingest", "a.pt", "--store", "s", "--run-id", "r", "--dtype", "int8"], ["--dtype", "'int8'"]),
    (["runs", "--store"], ["--store", "expected one argument", "kma runs --help"]),
    (["analyze", "--store", "s", "--bogus"], ["unrecognized arguments: --bogus", "kma analyze --help"]),
    (["sweep", "c.yaml", "a=1", "--bogus"], ["unrecognized arguments: --bogus", "kma sweep --help"]),
    (["runs", "--store", "s", "depth=2"], ["unrecognized arguments: depth=2", "kma runs --help"]),
    (["sweep", "c.yaml", "--no-analyze", "--analyze"], ["not allowed with argument"]),
])
def test_argparse_mistakes_are_one_line(capsys, argv, words):
    try:            # argparse exits; a value the one rule refuses after parsing returns 2
        code = main(argv)
    except SystemExit as ex:
        code = ex.code
    assert code == 2
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kma: error: "), cap.err
    assert "usage:" not in cap.err and cap.out == ""
    for w in words:
        assert w in lines[0], (w, lines[0])
