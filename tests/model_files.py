"""Small checkpoint files that tests of several modules share."""
from __future__ import annotations

import torch


def gru_with_an_unused_tensor(path):
    """Save embedding(9, 4) → GRU(4, 6) → Linear(6, 9) as a state dict with one tensor more
    (``extra.scale``) that no part of the model uses; returns the three modules."""
    torch.manual_seed(0)
    rnn, emb, head = torch.nn.GRU(4, 6), torch.nn.Embedding(9, 4), torch.nn.Linear(6, 9)
    sd = {**{f"rnn.{k}": v for k, v in rnn.state_dict().items()}, "embed.weight": emb.weight.data,
          "head.weight": head.weight.data, "head.bias": head.bias.data, "extra.scale": torch.ones(5, 3)}
    torch.save(sd, path)
    return rnn, emb, head
