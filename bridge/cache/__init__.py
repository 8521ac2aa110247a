"""The bridge's own database: watermarks, the exactly-once ledger and the metric totals."""
