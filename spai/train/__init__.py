"""Training: losses, schedule, two-stage parameter selection, metrics, checkpoints/resume and the loop."""
