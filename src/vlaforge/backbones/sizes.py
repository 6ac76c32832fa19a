"""Shared shapes for the realistic-size random-init architectures used in benchmarks.

``256m`` sizes put each family at roughly SmolVLM-256M's scale — a ViT-B vision tower at 224 px (SmolVLM
itself: 512 px with 4x pixel shuffle) and SmolLM2-135M's decoder shape — so that prefix-encode latencies
compare the families' designs (tokens per image, attention pattern) at one realistic size.
"""

from __future__ import annotations

VIT_B = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
LM_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=4096)
LM_360M = dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
               num_key_value_heads=5, max_position_embeddings=8192)  # SmolLM2-360M (SmolVLM2-500M's decoder)
VOCAB = 49280
