"""The two files LiteFS keeps in its FUSE mount, read and checked: `<db>-pos` and `.primary`.

- `<db>-pos`: `%016x/%016x\\n`, the txid and checksum of the database's last transaction,
  rewritten by LiteFS at every commit;
- `.primary`: the primary's hostname and a newline, present only on a replica connected to a
  primary (absent on the primary itself).

Formats: `shared/reference/fly-platform.md`, section 4. Pure functions: the engine
(`forwarder.engines.litefs`) and `forwarder check` both read the files through them.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..exceptions import EngineUnavailable, PositionFormatError
from ..txid import Txid

__all__ = ["PRIMARY_FILE", "UNREADABLE", "Unreadable", "parse_pos", "pos_file", "read_pos_text", "read_primary"]

PRIMARY_FILE = ".primary"
"""The name of the primary file in the mount."""

_POS = re.compile(r"([0-9a-f]{16})/[0-9a-f]{16}\n?")
# A hostname, or hostname:port (the LiteFS docs show one), as printable ASCII without spaces.
_HOSTNAME = re.compile(r"[!-~]{1,255}")


class Unreadable:
    """A `.primary` that could not be read or holds garbage; `problem` says which, for the log."""

    def __init__(self, problem: str, key: str) -> None:
        self.problem = problem
        self.key = key  # the same problem gives the same key, so it is reported once


UNREADABLE = Unreadable("", "")
"""A placeholder for "nothing valid was read" where the problem is already reported."""


def pos_file(mount: Path, database: str) -> Path:
    """The position file of `database` in the LiteFS `mount`."""
    return mount / f"{database}-pos"


def read_pos_text(path: Path, mount: Path) -> str | None:
    """The raw text of a `-pos` file; None when it does not exist; `EngineUnavailable` when unreadable."""
    try:
        return path.read_bytes().decode("ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EngineUnavailable(f"cannot read {path} ({exc}); is LiteFS running and mounted at {mount}?") from exc


def parse_pos(text: str, path: Path, mount: Path, database: str) -> Txid:
    """The txid of a `-pos` file's text; `PositionFormatError` naming the file and the fix otherwise."""
    if _POS.fullmatch(text) is None:
        shown = text if len(text) <= 80 else f"{text[:80]}..."
        raise PositionFormatError(
            f"{path} holds {shown!r}, not a LiteFS position (`<16 hex txid>/<16 hex checksum>` and "
            f"a newline); is {mount} the LiteFS mount and {database!r} the database's name in it?"
        )
    return Txid.parse(text[:16])


def read_primary(path: Path) -> str | None | Unreadable:
    """The hostname in `.primary`: None when absent, "" when blank, `Unreadable` when unreadable or garbage."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Unreadable(f"cannot read {path} ({exc}); is LiteFS running?", f"primary error {exc}")
    text = raw.decode("ascii", errors="replace")
    hostname = text.strip()
    if hostname and _HOSTNAME.fullmatch(hostname) is None:
        shown = text if len(text) <= 80 else f"{text[:80]}..."
        return Unreadable(
            f"{path} holds {shown!r}, not a hostname and a newline; ignoring it", f"primary garbage {text}"
        )
    return hostname
