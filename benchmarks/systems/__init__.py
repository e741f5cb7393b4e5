"""One module per benchmarked system; each runs the same no-op workload (`tracker.work`)."""
