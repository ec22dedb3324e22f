"""The middle layer: dimensions, per-call state and delivery to sinks, shared by every driver."""
