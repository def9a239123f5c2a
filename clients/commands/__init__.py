"""One module per ``byol`` subcommand: parse argv → build a typed config → call one library function → print.

Nothing here is imported until its command runs (``clients.cli`` resolves the table lazily), so ``byol --help``
needs neither torch nor BentoML.
"""
