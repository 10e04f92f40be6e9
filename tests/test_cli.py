import importlib

from gradharmony.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert main(["pretrian"]) == 2
    assert "unknown command 'pretrian'" in capsys.readouterr().err


def test_every_command_resolves_to_a_callable():
    for module_name, func_name, _ in COMMANDS.values():
        assert callable(getattr(importlib.import_module(module_name), func_name))
