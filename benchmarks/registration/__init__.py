"""Registration benchmarks: SAM registrars against ANTs / elastix on warped CTs, and the peer wrappers."""
