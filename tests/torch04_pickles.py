"""PyTorch 0.4 whole-module checkpoints re-created faithfully, for tests: the legacy layout
(magic number, protocol 1001, system info, the object's pickle, storage keys, raw storages), the
object pickled with protocol 2 as 0.4's ``torch.save(model)`` did, with module classes written
once as ``('module', class, source file, source)`` persistent ids and tensors as
``Parameter(_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks), True)``."""
from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn


class _Global:
    """A name written into the pickle as GLOBAL module\\nname (nothing is imported)."""

    def __init__(self, module, name, module_class=False):
        self.module, self.name, self.module_class = module, name, module_class


class _Obj:
    """An object pickled as NEWOBJ of ``cls`` then BUILD with ``state`` (protocol 2)."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state


class _Call:
    """REDUCE of ``func`` with ``args``."""

    def __init__(self, func, args):
        self.func, self.args = func, args


class _Storage:
    def __init__(self, key, values):
        self.key, self.values = key, values


class _OldPickler(pickle._Pickler):
    """PyTorch 0.4's torch.save: protocol 2, storages as persistent ids
    ('storage', torch.FloatStorage, key, location, size, view_metadata), and each nn.Module
    class, the first time it is written, as ('module', class, source file, source)."""

    def __init__(self, f):
        super().__init__(f, protocol=2)
        self.storages: list[_Storage] = []
        self.classes: set = set()

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            if obj not in self.storages:
                self.storages.append(obj)
            return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", len(obj.values), None)
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global) and obj.module_class and (obj.module, obj.name) not in self.classes:
            self.classes.add((obj.module, obj.name))
            source = f"class {obj.name}(Module):\n    def forward(self, input):\n        ...\n"
            self.save(("module", _Global(obj.module, obj.name), f"/usr/lib/python3.6/{obj.module}.py", source))
            self.write(pickle.BINPERSID)
        elif isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        elif isinstance(obj, _Obj):
            self.save(obj.cls)
            self.save(())
            self.write(pickle.NEWOBJ)
            self.memoize(obj)
            self.save(obj.state)
            self.write(pickle.BUILD)
        elif isinstance(obj, _Call):
            self.save(obj.func)
            self.save(obj.args)
            self.write(pickle.REDUCE)
            self.memoize(obj)
        else:
            super().save(obj, save_persistent_id)


def _old_module(cls_name, module, params, children=(), **attrs):
    """A torch 0.4 nn.Module's __dict__ (Module.__init__ then the subclass's attributes)."""
    state = OrderedDict([
        ("_backend", _Obj(_Global("torch.nn.backends.thnn", "THNNFunctionBackend"),
                          {"name_to_function_backends": {}})),
        ("_parameters", OrderedDict(params)),  # OrderedDict pickles as REDUCE(OrderedDict, ()) + SETITEMS
        ("_buffers", OrderedDict()),
        ("_backward_hooks", OrderedDict()),
        ("_forward_hooks", OrderedDict()),
        ("_forward_pre_hooks", OrderedDict()),
        ("_modules", OrderedDict(children)),
        ("training", False),
    ])
    state.update(attrs)
    return _Obj(_Global(module, cls_name, module_class=True), dict(state))


def _old_parameter(t: torch.Tensor, key: str) -> _Call:
    # 0.4: Parameter.__reduce_ex__ -> (Parameter, (data, requires_grad)); the tensor's own
    # __reduce_ex__ -> (torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, requires_grad, hooks))
    storage = _Storage(key, t.detach().contiguous().flatten().tolist())
    data = _Call(_Global("torch._utils", "_rebuild_tensor_v2"),
                 (storage, 0, tuple(t.shape), t.stride(), False, OrderedDict()))
    return _Call(_Global("torch.nn.parameter", "Parameter"), (data, True))


def torch04_save(m: nn.Module, path: Path) -> None:
    """``m`` (embedding -> 2-layer LSTM -> fc, with ``.chars``) saved as PyTorch 0.4's torch.save(m) did."""
    counter = iter(range(10**6))

    def params(mod):
        return [(k, _old_parameter(v, str(94000000 + next(counter)))) for k, v in mod._parameters.items()]

    rnn = m.rnn
    all_weights = [[f"{w}_l{k}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")] for k in range(2)]
    lstm = _old_module("LSTM", "torch.nn.modules.rnn", params(rnn), mode="LSTM", input_size=8, hidden_size=16,
                       num_layers=2, bias=True, batch_first=True, dropout=0, dropout_state={},
                       bidirectional=False, _all_weights=all_weights, _data_ptrs=[])
    emb = _old_module("Embedding", "torch.nn.modules.sparse", params(m.embedding), num_embeddings=m.embedding.num_embeddings,
                      embedding_dim=8, padding_idx=None, max_norm=None, norm_type=2, scale_grad_by_freq=False,
                      sparse=False)
    fc = _old_module("Linear", "torch.nn.modules.linear", params(m.fc), in_features=16, out_features=m.fc.out_features)
    top = _old_module("CharRNN", "__main__", [], [("embedding", emb), ("rnn", lstm), ("fc", fc)], chars=m.chars)
    buf = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001,
                 {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(head, buf, protocol=2)
    pickler = _OldPickler(buf)
    pickler.dump(top)
    pickle.dump([s.key for s in pickler.storages], buf, protocol=2)
    for st_ in pickler.storages:  # storage._write_file: int64 element count, then the raw bytes
        buf.write(struct.pack("<q", len(st_.values)))
        buf.write(np.asarray(st_.values, dtype="<f4").tobytes())
    path.write_bytes(buf.getvalue())
