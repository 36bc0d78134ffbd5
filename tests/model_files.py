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


def lstm_with_custom_names(path):
    """Save embedding(9, 4) → LSTM(4, 6) → Linear(6, 9) under names no rule recognises, and
    return ``(modules, config)``: the config whose key_map reads them (what a refusal offers)."""
    torch.manual_seed(1)
    rnn, emb, head = torch.nn.LSTM(4, 6), torch.nn.Embedding(9, 4), torch.nn.Linear(6, 9)
    names = {"Wx": "rnn.weight_ih_l0", "Wh": "rnn.weight_hh_l0", "bx": "rnn.bias_ih_l0", "bh": "rnn.bias_hh_l0",
             "E": "embed.weight", "V": "head.weight", "c": "head.bias"}
    own = {**{f"rnn.{k}": v for k, v in rnn.state_dict().items()}, "embed.weight": emb.weight.data,
           "head.weight": head.weight.data, "head.bias": head.bias.data}
    torch.save({mine: own[canon].clone() for mine, canon in names.items()}, path)
    config = {"cell": "lstm", "num_layers": 1, "hidden_size": 6, "input_size": 4, "vocab_size": 9,
              "output_size": 9, "key_map": names}
    return (rnn, emb, head), config
