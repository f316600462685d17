"""Training: losses, sampling, augmentation, the loop and its recipes."""
