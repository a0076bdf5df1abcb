"""The shared study core: plan, runner, run store, config, statistics, findings, reports, logging, SLURM."""
