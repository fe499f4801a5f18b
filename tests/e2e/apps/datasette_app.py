"""Datasette as an ASGI app on a forwarder node, configured the way Datasette's docs configure one.

`datasette serve` needs none of this (the plugin does it from FORWARDER_*); an app built in
Python passes the cluster's secret itself. The config has stored (canned) write queries for the
browser flow and lets the `api` actor use the JSON write API; the plugin in datasette_plugins/
creates the table on the primary and adds a GET that writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasette.app import Datasette

from forwarder.datasette import cluster_secret

CONFIG = {
    "databases": {
        "app": {
            "queries": {
                "add_note": {
                    "sql": "insert into notes (body) values (:body)",
                    "write": True,
                    "on_success_message": "Note added",
                },
                "edit_note": {
                    "sql": "update notes set body = :body where id = :id",
                    "write": True,
                    "on_success_message": "Note saved",
                },
                "remove_note": {
                    "sql": "delete from notes where id = :id",
                    "write": True,
                    "on_success_message": "Note removed",
                },
            }
        }
    },
    "permissions": {
        "insert-row": {"id": "api"},
        "update-row": {"id": "api"},
        "delete-row": {"id": "api"},
    },
}

datasette = Datasette(
    [os.environ["FORWARDER_DATABASE"]],
    secret=cluster_secret(),
    config=CONFIG,
    plugins_dir=str(Path(__file__).parent / "datasette_plugins"),
)
app = datasette.app()
