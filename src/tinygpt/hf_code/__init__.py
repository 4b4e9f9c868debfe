"""The code an exported folder carries for a GPT that transformers has no class for: copied
into the folder beside its weights and loaded with `trust_remote_code=True` (hf.py)."""
