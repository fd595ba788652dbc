"""Landmark benchmarks on the cephalograms: the one-shot protocol, the dev split, detector speed."""
