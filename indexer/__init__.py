"""Corpus, passages, passage store, dense / sparse / edit indexes. Imports nothing above it."""
