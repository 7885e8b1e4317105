"""Per-architecture calling conventions: how registers become a Call and back."""
