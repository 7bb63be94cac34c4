"""What a command runs: evaluation over seeded episodes, tuning, CI suites and labelling one large task."""
