"""Subcommands of the `spt-adapter` command line, one module each (see spt_adapter.cli)."""
