"""Entry points: parse config, wire the packages, run (the `slmnet` CLI)."""
