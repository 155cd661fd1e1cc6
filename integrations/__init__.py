"""Integration shims, one self-contained folder per code base; installed as ``spt_adapter.integrations``."""
