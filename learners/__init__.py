"""What turns experience into weights: learners on DeepSpeed, testable without Ray.

Importing this package does not import DeepSpeed; ``deepspeed_setup`` does, on first use.
"""
