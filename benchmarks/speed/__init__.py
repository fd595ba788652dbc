"""CPU speed: network, memory format, volume size, patch sampling, matching, training throughput."""
