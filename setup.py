"""Build hook: generate the protobuf and gRPC modules from proto/ at install time.

The generated modules land in custos/v1/ (ignored by git) so that both regular and editable
installs import them as ``custos.v1.*``. Nothing generated is ever edited by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from custos.protogen import generate  # noqa: E402


class BuildWithProtos(build_py):
    def run(self) -> None:
        generate(ROOT)
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
