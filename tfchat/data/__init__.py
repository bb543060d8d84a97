"""Data: one reader per source format, shared I/O and splits, and tf.data batches for each objective."""
