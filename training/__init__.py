"""The DINOv2 trainer: models, layers, losses, data, train loop, checkpoints, evaluation."""
