"""Gate providers: each turns a gate of the pinned analysis into a Check for the engine."""
