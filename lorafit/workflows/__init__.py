"""The workflows behind the CLI commands, one module each (train, evaluate, merge): each reads as the
command's data flow, calling the core packages. Core packages never import from here."""
