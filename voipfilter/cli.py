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
    "serve": ("voipfilter.serve", "run the demo call server"),
}


DESCRIPTION = "Real-time noise suppression for WebRTC and VoIP calls: files, a demo call server, benchmarks, training."
EPILOG = "Run 'voipfilter COMMAND -h' for the options of a command."


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="voipfilter", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-V", "--version", action="version", version=f"voipfilter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``voipfilter ARGV``; Ctrl-C ends any command with one line and exit code 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"voipfilter{' ' + name if name else ''}: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 2
        if argv[0].startswith("-"):
            parser.parse_args(argv)  # -h / --version exit here; anything else is an error
        parser.error(f"unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}")
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
