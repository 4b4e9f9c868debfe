"""Seeing inside a model: attention maps (attention), next-token probabilities (probs), loss
curves (plot), and the lecture notebook's cells printed by `inspect` and `trick` (notebook)."""
