"""The numpy float64 oracle: a manual forward and backward pass of the canonical semantics, no framework."""
