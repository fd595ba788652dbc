"""Internal helpers shared by every layer: parameter validation, shared docstring text, threads,
atomic file writes and small numeric kernels. Imports nothing from samlearn but the exceptions."""
