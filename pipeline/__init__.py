"""Distillation pipeline: detection datasets -> teacher embeddings -> verified shards."""
