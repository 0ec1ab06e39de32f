"""Planning, before any stage runs (torch-free): the matrix as a list of stages, what they are expected to
cost, whether finished stages are still valid (data fingerprints, changed plugin code)."""
