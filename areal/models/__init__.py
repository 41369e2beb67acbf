"""Model wrappers shared by the rollout and learner sides (both must compute the same policy)."""
