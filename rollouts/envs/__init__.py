"""Environments for agents and their tools: the sandbox that runs model-written code."""
