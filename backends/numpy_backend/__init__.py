"""The numpy float64 oracle: an explicit forward and backward per layer kind of the canonical semantics, no
framework."""
