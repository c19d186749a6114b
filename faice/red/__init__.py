"""RED files: loading, schemas, semantic checks, variables, sweeps and batches."""
