"""A tiny model of a family that takes no initial state (RecurrentGemma: its local attention's
keys and values are part of its state), for the tests of the refusals."""
import torch

from engine.models.recurrent_gemma import RecurrentGemmaConfig, RecurrentGemmaModel


def stateless_model():
    cfg = RecurrentGemmaConfig(hidden_size=8, num_hidden_layers=2, vocab_size=11, intermediate_size=16,
                               num_attention_heads=2, num_key_value_heads=1, lru_width=8, attention_window_size=4,
                               block_types=("recurrent", "attention"))
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(s, generator=g) * 0.1 for k, s in RecurrentGemmaModel.weight_shapes(cfg).items()}
    return RecurrentGemmaModel(cfg, weights)
