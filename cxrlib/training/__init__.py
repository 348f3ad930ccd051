"""Training: the model and its backbones, the loader, one step and one epoch, fit with exact resume, checkpoints, DDP."""
