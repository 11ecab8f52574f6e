"""Run state: the run directory, its lock, the labeled-set ledger, the oracles."""
