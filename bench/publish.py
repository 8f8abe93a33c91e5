"""How every bench script ends: the report on stdout, and in the --md file when given."""

from __future__ import annotations

import os


def publish(report: str, md: str | None) -> None:
    print(report)
    if md:
        os.makedirs(os.path.dirname(os.path.abspath(md)), exist_ok=True)
        with open(md, "w") as fh:
            fh.write(report)
