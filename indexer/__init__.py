"""Collection schema, vector-store adapters and the ingest pipeline."""
