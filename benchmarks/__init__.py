"""The Parity harness: the `parity` CLI, the per-backend subprocess runner, the report and the plots."""
