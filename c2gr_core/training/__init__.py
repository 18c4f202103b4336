"""What every method trains with: the trainer, DDP helpers, the replay store and data isolation."""
