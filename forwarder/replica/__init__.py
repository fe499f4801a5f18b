"""A replica's Litestream follower, supervised: restore, follow, and restore again without a window.

`ReplicaSupervisor` is what `forwarder replica` runs on a replica host and what `forwarder dev`
runs for each replica node; `Generations` is the on-disk layout that makes the swap atomic.
"""

from .generations import Generations
from .primary import HealthPosition, PrimaryPosition, StorePosition
from .supervisor import ReplicaSupervisor
from .txid_file import read_txid_file

__all__ = ["Generations", "HealthPosition", "PrimaryPosition", "ReplicaSupervisor", "StorePosition", "read_txid_file"]
