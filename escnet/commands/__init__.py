"""One module per `escnet X` command (escnet.cli lists them in COMMANDS). Each defines
``add_command(subparsers)`` and imports torch only inside the function that runs the command, so
that building the parser (`escnet --help`) stays light. Shared: arguments.py (argument groups),
policy.py (errors and exit statuses). Map: docs/package-map.md."""
