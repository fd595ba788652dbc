"""The bad-input matrix of the reliability tests, as a table."""
