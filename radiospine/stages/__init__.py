"""The stages' runners, one module per ``radiospine`` command: config -> library call -> artifact.

Each module has ``add_arguments(parser)`` and ``run(args) -> int`` and is registered in
:data:`radiospine.cli.COMMANDS`. Runners never import each other: what two of them share lives in the library
(work-folder paths in :mod:`radiospine.workspace`).
"""
