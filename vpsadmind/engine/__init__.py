"""The transaction engine: selection, claims, workers, result save, confirmations, journal and recovery."""
