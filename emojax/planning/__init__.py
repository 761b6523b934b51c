"""What `emojax.plan` adds to XLA's figures: activations by arithmetic (activations) and what stays resident on a
device between a job's programs (resident)."""
