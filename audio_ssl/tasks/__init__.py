"""Lightning tasks: pretraining; LR schedules; the collapse watch."""
