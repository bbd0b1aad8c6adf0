"""The store's schema versions, oldest first: each file is one revision (`down_revision` names the one before)."""
