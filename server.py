#!/usr/bin/env python3
"""Run the voipfilter demo call server from a checkout: ``python server.py [options]``.

The same as ``voipfilter serve [options]``; it serves the page from the ``web/`` folder
next to this file and works without installing the package (the repository's
``voipfilter/`` is put on the import path). ``python server.py --help`` lists the options.
"""
import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from voipfilter import serve  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="server.py", description="voipfilter demo call server")
    serve.configure(parser)
    if not os.environ.get("VOIPFILTER_WEB_DIR"):
        parser.set_defaults(web_dir=str(HERE / "web"))
    return serve.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
