"""Reusable ``nn.Module`` pieces shared by several methods (replay buffer, prompt pools, LoRA helpers, gates)."""
