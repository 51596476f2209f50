"""Post-training from scratch: chat templates and SFT masks, preference losses, reward models, RL."""
