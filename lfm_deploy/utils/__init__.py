"""Small shared utilities (pure Python, no torch): safe, atomic outputs and hashing."""
