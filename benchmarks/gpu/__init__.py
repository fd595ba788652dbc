"""GPU checks: throughput and utilisation, CPU/GPU agreement, determinism, and tuning on a GPU."""
