"""The CLI's commands, one module per group; each command body is a few lines that call one workflow
(or, for the small ones, the core). `app.py` holds the Typer app and the error handling every command
shares; lorafit/cli.py imports the groups and is the entry point."""
