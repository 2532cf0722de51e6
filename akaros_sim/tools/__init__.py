"""Tools on top of the runtime: scenarios and their expectations, the CLI, replay and diff, narration, Perfetto export.

Nothing in the runtime imports from here.
"""
