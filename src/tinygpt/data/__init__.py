"""Text to training batches: the corpora and their cache (corpora), text read as a stream
(sources), token files written and read (token_files), and batches cut from them (batches)."""
