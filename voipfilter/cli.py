"""The ``voipfilter`` command: one subcommand per module, imported only when chosen.

Each command module exposes ``configure(parser)`` and ``run(args) -> int``. Importing a
command lazily keeps ``voipfilter --help`` and the run-time commands free of torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "enhance": ("voipfilter.enhance", "denoise audio files through the streaming path"),
    "bench": ("voipfilter.bench", "time the filter against the upstream reference"),
    "export": ("voipfilter.nn.export", "export a checkpoint to a streaming ONNX model (needs [train])"),
    "train": ("voipfilter.train.trainer", "train a model (needs [train])"),
    "average": ("voipfilter.nn.average", "average the weights of checkpoints of one network (needs [train])"),
    "validate": ("voipfilter.train.validate", "score checkpoints on a run's held-out validation mixes (needs [train])"),
    "eval": ("voipfilter.evaluate.cli", "score a model on noisy (and clean) folders (needs [eval])"),
    "asterisk-voices": ("voipfilter.train.asterisk_voices", "write the Debian Asterisk IVR voices as training speech"),
    "check-pairs": ("voipfilter.train.pairs", "check noisy/clean pair folders before training"),
    "serve": ("voipfilter.server", "run the demo call server"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voipfilter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = "train" if module_name.startswith(("voipfilter.nn", "voipfilter.train")) else "eval"
        print(
            f"voipfilter {name}: missing dependency {exc.name!r}. "
            f"Install it with: pip install 'voipfilter[{extra}]'",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog=f"voipfilter {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
