"""The engine-neutral batch pipeline: options, plans, one batch, many batches on a host, records."""
