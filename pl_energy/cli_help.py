"""``pl-energy --help``: the algorithm hyper-parameter flags read from the algorithm dataclasses,
and a formatter that keeps the help to a few screens."""

from __future__ import annotations

import re
from typing import Any

from jsonargparse import DefaultHelpFormatter

from .algorithms import ALGORITHMS, hyperparameters_of
from .algorithms.registry import hyperparameter_docs, hyperparameter_types


def hyperparameter_flags() -> dict[str, tuple[Any, str]]:
    """The ``--<name>`` flag of every algorithm hyper-parameter: its type and help, read from the
    algorithm dataclasses (fields, annotations and ``Args:`` docstrings), so that a new field is a
    new flag. A name that means different things in different algorithms (``gamma``) lists each
    meaning with the algorithms it belongs to; the help ends with every algorithm's default."""
    flags: dict[str, tuple[Any, str]] = {}
    for name in ALGORITHMS:
        for field, kind in hyperparameter_types(name).items():
            if field not in flags:
                flags[field] = (kind, "")
    for field, (kind, _) in flags.items():
        meanings: dict[str, list[str]] = {}
        defaults: dict[str, list[str]] = {}
        for name in ALGORITHMS:
            docs = hyperparameter_docs(name)
            if field in docs:
                meanings.setdefault(_first_sentence(docs[field]), []).append(name)
                defaults.setdefault(str(hyperparameters_of(name)[field]), []).append(name)
        text = "; ".join(f"{meaning} [{', '.join(names)}]" for meaning, names in meanings.items())
        default = ", ".join(f"{value} ({', '.join(names)})" for value, names in defaults.items())
        flags[field] = (kind, f"{text} Default: {default}.")
    return flags


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=\.)\s(?=[A-Z])", " ".join(text.split()), maxsplit=1)[0].rstrip(".")


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("NoneType", "None")


def _algorithm_help() -> str:
    return ("The learning algorithm: " + ", ".join(ALGORITHMS) + ". Its hyper-parameters are the flags "
            "of the group below (each says which algorithms have it and their defaults).")


#: Flags whose help the formatter cuts to its first sentence and default: Lightning's, and the
#: module's (its docstring, whole in the API reference).
BRIEF_FLAGS = ("trainer.", "model.", "ckpt_path", "weights_only", "seed_everything", "print_config")


class BriefHelpFormatter(DefaultHelpFormatter):
    """``--help`` that fits on a few screens: the Trainer's and the module's flags keep the first
    sentence of their documentation, and the lists of known subclasses (hundreds of ``nn.Module``
    and Lightning classes) give way to the ``--<flag>.help CLASS`` that describes one."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", 100)  # the same in every terminal, as the saved help (cli_saved_help)
        kwargs.setdefault("max_help_position", 34)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action) -> str:
        if getattr(action, "complete_help", False):
            return action.help
        text = super()._get_help_string(action)
        text = re.sub(r", known subclasses: [^)]*\)", ")", text, flags=re.S)
        if action.dest.startswith(BRIEF_FLAGS) and "(" in text:
            description, _, details = text.rpartition(" (")
            first = _first_sentence(description) + "."
            default = re.search(r"default: .*\)$", details)
            text = f"{first} ({default.group(0) if default else details}"
        return text

    def _format_usage(self, usage, actions, groups, prefix) -> str:
        text = super()._format_usage(usage, actions, groups, prefix)
        lines = text.strip().splitlines()
        if len(lines) <= 4:
            return text
        first = lines[0]  # "usage: pl-energy [options] fit [-c CONFIG] ..."
        command = first[:first.index(" [-c")] if " [-c" in first else first.split(" [", 1)[0]
        return (f"{command} [-c CONFIG] [--algorithm NAME] [--<hyper-parameter> VALUE]\n"
                f"{' ' * len('usage: ')}[--model.* ...] [--data.* ...] [--trainer.* ...] [--agreement.* ...]\n\n")

    def _format_action(self, action) -> str:
        if action.dest.startswith("trainer.") and any(o.endswith(".help") for o in action.option_strings):
            return ""  # --trainer.<flag>.help CLASS still works; the usage line names it
        return super()._format_action(action)
