"""Observation of the sync engine: metrics, status snapshots, service health (and, later, samples and alerts)."""
