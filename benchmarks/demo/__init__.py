"""The synthetic phantoms: generation time and a montage to look at."""
