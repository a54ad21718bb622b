"""Progress bars on a terminal, silence in pipes and CI."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(*, disable: bool | None = None, **kwargs: Any) -> tqdm:
    if disable is None:
        disable = not interactive()
    return tqdm(disable=disable, leave=False, dynamic_ncols=True, **kwargs)
