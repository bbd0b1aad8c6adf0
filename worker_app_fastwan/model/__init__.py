"""The model, without importing torch: where the weights come from (fetch), how they fit the card (offload,
memory_budget) and whether a production backend may run here (cuda_check)."""
