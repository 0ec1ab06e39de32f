"""Execution: where and when stages run. Stage locks, the claim loop shared by every worker, the local
process pool, Slurm submission, the events log and progress display."""
