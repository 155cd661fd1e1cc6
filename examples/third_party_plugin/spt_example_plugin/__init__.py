"""A minimal third-party spt-adapter plugin (see plugin.py)."""
