"""What produces experience: inference engines, tasks and rewards, episode workflows.

Plain Python classes, usable and testable without Ray.
"""
