"""The torch modules people write (a char-RNN with an embedding and a head, a stack of cells),
saved as tests of loading save them, and the check that a loaded model reproduces them exactly."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import engine

CHARS = list("abcdefghij ")
V = len(CHARS)
T = 37  # below the run chunk (64), so the fused kernel sees the same shapes as the original


# -- the modules people write ------------------------------------------------------------


class CharRNN(nn.Module):
    """Embedding -> recurrent layers -> Linear, the classic char-RNN."""

    def __init__(self, kind=nn.LSTM, vocab=V, emb=8, hidden=16, layers=2, head=True, bias=True, **kw):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = kind(emb, hidden, layers, batch_first=True, bias=bias, **kw)
        out = (kw.get("proj_size") or hidden) * (2 if kw.get("bidirectional") else 1)
        self.fc = nn.Linear(out, vocab, bias=bias) if head else None

    def forward(self, ids):
        y, _ = self.rnn(self.embedding(ids))
        return (self.fc(y) if self.fc is not None else None), y


class CellStack(nn.Module):
    """The hand-written loop over nn.LSTMCell / nn.GRUCell layers."""

    def __init__(self, cell=nn.LSTMCell, vocab=V, emb=8, hidden=12, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.cells = nn.ModuleList([cell(emb if k == 0 else hidden, hidden) for k in range(layers)])
        self.head = nn.Linear(hidden, vocab)
        self.is_lstm = cell is nn.LSTMCell

    def forward(self, ids):  # ids: [T]
        x = self.embed(ids)
        for cell in self.cells:
            h = torch.zeros(1, cell.hidden_size)
            c = torch.zeros(1, cell.hidden_size)
            ys = []
            for t in range(x.shape[0]):
                if self.is_lstm:
                    h, c = cell(x[t : t + 1], (h, c))
                else:
                    h = cell(x[t : t + 1], h)
                ys.append(h[0])
            x = torch.stack(ys)
        return self.head(x), x


def make(module_cls, seed=0, **kw):
    torch.manual_seed(seed)
    return module_cls(**kw).eval()


def ids_for(seed=1, n=T, vocab=V):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g)


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def check_exact(model, module, ids, last_layer):
    """engine.run on the loaded model equals the original module, bit for bit."""
    with torch.no_grad():
        logits, y = module(ids[None])
    trace = engine.run(model, ids.numpy())
    assert torch.equal(t(trace[f"layers.{last_layer}.h"]), y[0])
    if logits is not None:
        assert torch.equal(t(trace["logits"]), logits[0])
    return trace
