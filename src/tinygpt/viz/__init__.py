"""Seeing inside a trained model: attention maps (`attention.py`) and next-token
probabilities (`probs.py`); loss curves of runs are `plot.py`'s."""
