"""Ray only: thin actor wrappers over rollouts/ and learners/, placement, and the driver loop."""
