"""Contrastive fine-tuning of the encoders, evaluation, and the sample library."""
