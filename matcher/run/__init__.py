"""Run: the worker pool and the stage loops (pipeline), the dump run (resume + custody)."""
