"""Nothing a file declares makes engine.load allocate beyond what the file holds, hang, or
raise anything but a LoadError with one plain sentence.

Each case runs in a worker thread under an address-space limit a few GB above the process's
size (so a regression fails the test instead of exhausting the machine), and the test checks
the peak memory growth (VmHWM after resetting it), the time taken, the exception's type and
its message."""
from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import engine
from engine.errors import LoadError
from engine.models.mamba import MambaConfig, canonical_weight_shapes as mamba_shapes
from engine.tokenizers import CharVocab
from memory_probe import proc_status, reset_peak

MB = 1 << 20
GROWTH_LIMIT_MB = 400  # the most a refused (or bounded) load may add to the peak memory
TIME_LIMIT_S = 30  # a hang is a failure; real cases take well under a second


# -- running a case -----------------------------------------------------------------------------
def bounded(fn, *, unblock=None):
    """Run ``fn()`` in a thread with the address space capped at 3 GB above the current size;
    returns (result, exception, peak growth in bytes, seconds).  ``unblock`` is called when the
    thread is still running at the time limit (to release a reader stuck on a pipe)."""
    box: dict = {}

    def work():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = proc_status("VmSize") + 3 * 1024 * MB
    can_cap = hard == resource.RLIM_INFINITY or hard > cap
    measured = reset_peak()
    base = proc_status("VmRSS")
    if can_cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        start = time.monotonic()
        t = threading.Thread(target=work, daemon=True)
        t.start()
        t.join(TIME_LIMIT_S)
        elapsed = time.monotonic() - start
        if t.is_alive() and unblock is not None:
            unblock()
            t.join(5)
    finally:
        if can_cap:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    growth = proc_status("VmHWM") - base if measured else 0
    assert elapsed < TIME_LIMIT_S, f"still running after {TIME_LIMIT_S} s (a hang)"
    assert growth < GROWTH_LIMIT_MB * MB, f"peak memory grew by {growth / MB:.0f} MB"
    return box.get("result"), box.get("error"), growth, elapsed


def assert_plain(exc):
    """A LoadError whose message is one line with no traceback and prints on any terminal."""
    assert isinstance(exc, LoadError), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg and 'File "' not in msg, msg
    msg.encode("utf-8")  # no lone surrogates from undecodable file names


def refused(path, *, match: str, unblock=None, **kwargs) -> str:
    """engine.load(path) is refused with a plain LoadError containing ``match``, within the bounds."""
    result, error, _, _ = bounded(lambda: engine.load(path, device="cpu", **kwargs), unblock=unblock)
    assert result is None, "loaded, but should have been refused"
    assert_plain(error)
    assert re.search(match, str(error), re.I), str(error)
    return str(error)


def loaded(path, **kwargs):
    result, error, _, _ = bounded(lambda: engine.load(path, device="cpu", **kwargs))
    assert error is None, f"{type(error).__name__}: {error}"
    return result


# -- small honest files to start from --------------------------------------------------------------
def lstm_state(hidden=4, inputs=3, vocab=None, layers=1):
    torch.manual_seed(0)
    sd = {}
    if vocab:
        sd["embedding.weight"] = torch.randn(vocab, inputs)
    for k in range(layers):
        sd[f"rnn.weight_ih_l{k}"] = torch.randn(4 * hidden, inputs if k == 0 else hidden)
        sd[f"rnn.weight_hh_l{k}"] = torch.randn(4 * hidden, hidden)
        sd[f"rnn.bias_ih_l{k}"] = torch.randn(4 * hidden)
        sd[f"rnn.bias_hh_l{k}"] = torch.randn(4 * hidden)
    if vocab:
        sd["fc.weight"] = torch.randn(vocab, hidden)
        sd["fc.bias"] = torch.randn(vocab)
    return sd


def char_lstm_pt(path: Path, **entries) -> Path:
    torch.save({"state_dict": lstm_state(vocab=5), **entries}, path)
    return path


MAMBA = MambaConfig(d_model=8, n_layer=2, vocab_size=12, d_inner=16, d_state=4, d_conv=4)
HF_MAMBA_CONFIG = {"model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 12,
                   "state_size": 4, "conv_kernel": 4, "intermediate_size": 16, "layer_norm_epsilon": 1e-5}


def mamba_folder(path: Path, config: dict | None = None, *, ssm_layout=False) -> Path:
    """A tiny Mamba model as a transformers folder (config.json + model.safetensors) or in
    mamba_ssm's layout (its config keys + pytorch_model.bin)."""
    torch.manual_seed(1)
    tensors = {k: torch.randn(s) * 0.1 for k, s in mamba_shapes(MAMBA).items()}
    path.mkdir(parents=True, exist_ok=True)
    if ssm_layout:
        torch.save(tensors, path / "pytorch_model.bin")
        config = config or {"d_model": 8, "n_layer": 2, "vocab_size": 12,
                            "ssm_cfg": {"d_state": 4, "d_conv": 4, "expand": 2}}
    else:
        save_file(tensors, str(path / "model.safetensors"))
        config = config or HF_MAMBA_CONFIG
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_the_honest_files_load(tmp_path):
    assert loaded(char_lstm_pt(tmp_path / "m.pt", chars="abcde")).tokenizer is not None
    assert loaded(mamba_folder(tmp_path / "hf")).config.n_layer == 2
    assert loaded(mamba_folder(tmp_path / "ssm", ssm_layout=True)).config.n_layer == 2


# -- memory: sizes declared beyond what the file holds ----------------------------------------------
def test_vocabulary_ids_with_a_gap_build_no_huge_table(tmp_path):
    _, error, _, _ = bounded(lambda: CharVocab.from_any({"(": 0, ")": 400_000_000}))
    assert isinstance(error, ValueError) and "no gaps" in str(error)
    model = loaded(char_lstm_pt(tmp_path / "gap.pt", stoi={"(": 0, ")": 400_000_000}))
    assert model.tokenizer is None and "no gaps" in model.info()["notes"]


def test_a_one_hot_input_declared_very_wide_builds_no_dense_identity(tmp_path):
    width = 40_000  # an identity of 40,000² float32 is 6.4 GB; the file is 1.3 MB
    sd = {"rnn.weight_ih_l0": torch.randn(8, width), "rnn.weight_hh_l0": torch.randn(8, 2)}
    p = tmp_path / "onehot.pt"
    torch.save({"model": sd, "chars": [chr(0x4E00 + i) for i in range(width)]}, p)
    model = loaded(p)
    assert model.vocab_size is None and model.tokenizer is None
    assert "identity embedding" in model.info()["notes"]
    # a narrow one-hot model still gets its identity embedding
    torch.save({"model": {"rnn.weight_ih_l0": torch.randn(8, 5), "rnn.weight_hh_l0": torch.randn(8, 2)},
                "chars": "abcde"}, p)
    assert loaded(p).vocab_size == 5


@pytest.mark.parametrize("layers", [10**6, 10**8])
def test_a_layer_count_the_file_cannot_hold_is_refused_at_once(tmp_path, layers):
    p = char_lstm_pt(tmp_path / "m.pt")
    config = {"cell": "lstm", "num_layers": layers, "hidden_size": 4, "input_size": 3}
    refused(p, config=config, match="too few for that many layers")
    (tmp_path / "config.json").write_text(json.dumps(config))  # the same as a --config file
    refused(p, config=tmp_path / "config.json", match="too few for that many layers")
    # in a safetensors file's own metadata
    st = tmp_path / "m.safetensors"
    save_file({"rnn." + k.split("rnn.", 1)[-1] if k.startswith("rnn.") else k: v
               for k, v in lstm_state().items()}, str(st),
              metadata={"seqscope_config": json.dumps({**config, "vocab_size": None})})
    refused(st, match="too few for that many layers")
    # in a family's config.json
    refused(mamba_folder(tmp_path / "hf", {**HF_MAMBA_CONFIG, "num_hidden_layers": layers}),
            match="n_layer=.*too few for that many layers")
    refused(mamba_folder(tmp_path / "ssm", {"d_model": 8, "n_layer": layers, "vocab_size": 12,
                                            "ssm_cfg": {"d_state": 4, "d_conv": 4, "expand": 2}}, ssm_layout=True),
            match="too few for that many layers")


def test_a_stride_0_view_posing_as_large_weights_is_refused(tmp_path):
    hidden = 100_000  # 25 GB of LSTM weights, held in 4 bytes
    sd = {"rnn.weight_ih_l0": torch.zeros(1).expand(4 * hidden, 16_000),
          "rnn.weight_hh_l0": torch.zeros(1).expand(4 * hidden, hidden)}
    p = tmp_path / "stride0.pt"
    torch.save(sd, p)
    assert p.stat().st_size < 10_000
    refused(p, match="overlap")


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    honest = tmp_path / "honest.pt"
    torch.save(lstm_state(), honest)
    bomb = tmp_path / "bomb.pt"
    chunk = bytes(MB)
    with zipfile.ZipFile(honest) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith("data.pkl"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(entry, "w", force_zip64=True) as out:
                    for _ in range(200):  # 200 MB of zeros, deflated to ~200 kB
                        out.write(chunk)
            else:
                dst.writestr(info, src.read(info))
    assert bomb.stat().st_size < 2 * MB
    refused(bomb, match="inflate")


def test_a_checkpoint_re_zipped_with_deflate_still_loads(tmp_path):
    honest = char_lstm_pt(tmp_path / "honest.pt", chars="abcde")
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(honest) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    model = loaded(deflated)
    assert model.vocab_size == 5


# -- only regular files: devices and named pipes --------------------------------------------------
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _release(fifo: Path):
    """Open the pipe for writing and close it, so that a reader blocked on it gets end of file."""
    def unblock():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
    return unblock


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipes_are_never_opened(tmp_path):
    ck = _fifo(tmp_path / "model.pt")
    refused(ck, match="named pipe", unblock=_release(ck))
    # config.json beside the weights, and a --config file
    folder = mamba_folder(tmp_path / "hf")
    (folder / "config.json").unlink()
    _fifo(folder / "config.json")
    refused(folder, match="named pipe", unblock=_release(folder / "config.json"))
    p = char_lstm_pt(tmp_path / "m.pt")
    cfg = _fifo(tmp_path / "cfg.json")
    refused(p, config=cfg, match="named pipe", unblock=_release(cfg))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("name", ["vocab.json", "tokenizer.json", "rwkv_vocab_v20230424.txt"])
def test_a_vocabulary_that_is_a_named_pipe_is_passed_over_in_a_note(tmp_path, name):
    save_file(lstm_state(vocab=5), str(tmp_path / "model.safetensors"))
    pipe = _fifo(tmp_path / name)
    model, error, _, _ = bounded(lambda: engine.load(tmp_path / "model.safetensors", device="cpu"),
                                 unblock=_release(pipe))
    assert error is None, error
    assert model.tokenizer is None and "named pipe" in model.info()["notes"]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_as_a_vocabulary_or_tokenizer_path_is_refused(tmp_path):
    sd = lstm_state(vocab=5)
    st = tmp_path / "model.safetensors"
    save_file(sd, str(st), metadata={"seqscope_tokenizer": json.dumps({"kind": "tokenizer.json",
                                                                        "path": "/dev/zero"})})
    model = loaded(st)
    assert model.tokenizer is None and "character device" in model.info()["notes"]
    save_file(sd, str(st))
    (tmp_path / "vocab.json").symlink_to("/dev/zero")
    model = loaded(st)
    assert model.tokenizer is None and "character device" in model.info()["notes"]
    refused(Path("/dev/zero"), match="character device")


def test_a_proc_file_that_reports_size_0_is_read_with_its_cap(tmp_path):
    from engine.limits import read_capped

    _, error, _, _ = bounded(lambda: read_capped("/proc/self/maps", "file", limit=10))
    assert_plain(error)
    assert "more than the 10 bytes" in str(error)


# -- JSON nested deeply, configs of the wrong type ----------------------------------------------------
DEEP = "[" * 100_000


def test_deeply_nested_json_is_refused_wherever_it_is_read(tmp_path):
    folder = mamba_folder(tmp_path / "hf")
    (folder / "config.json").write_text(DEEP)
    refused(folder, match="nested 100000 levels deep")
    p = char_lstm_pt(tmp_path / "m.pt")
    (tmp_path / "deep.json").write_text('{"cell": ' + DEEP)
    refused(p, config=tmp_path / "deep.json", match="nested")
    st = tmp_path / "m.safetensors"
    save_file(lstm_state(vocab=5), str(st), metadata={"seqscope_config": DEEP})
    refused(st, match="nested")
    shards = mamba_folder(tmp_path / "sharded")
    (shards / "model.safetensors.index.json").write_text('{"weight_map": ' + DEEP + "}")
    refused(shards / "model.safetensors.index.json", match="nested")
    # a vocabulary nested deeply is passed over in a note
    (tmp_path / "v").mkdir()
    save_file(lstm_state(vocab=5), str(tmp_path / "v" / "model.safetensors"))
    (tmp_path / "v" / "vocab.json").write_text(DEEP)
    model = loaded(tmp_path / "v" / "model.safetensors")
    assert model.tokenizer is None and "nested" in model.info()["notes"]


def test_a_checkpoint_with_deeply_nested_entries_is_refused(tmp_path):
    deep: list = []
    node = deep
    for _ in range(2000):
        node.append([])
        node = node[0]
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        torch.save({"state_dict": lstm_state(vocab=5), "history": deep}, tmp_path / "deep.pt")
    finally:
        sys.setrecursionlimit(old)
    refused(tmp_path / "deep.pt", match="nested more than")


@pytest.mark.parametrize("key, value, named", [
    ("num_hidden_layers", "2", r"n(um_hidden)?_layers? is '2' \(text\), expected a whole number"),
    ("num_hidden_layers", 2.5, r"is 2\.5 \(a number\), expected a whole number"),
    ("num_hidden_layers", math.inf, r"expected a whole number"),
    ("vocab_size", "abc", r"vocab_size is 'abc' \(text\), expected a whole number"),
    ("vocab_size", None, r"vocab_size is null"),
    ("layer_norm_epsilon", None, r"layer_norm_epsilon is null"),
    ("layer_norm_epsilon", "small", r"layer_norm_epsilon is 'small' \(text\), expected a finite number"),
    ("hidden_size", 0, r"d_model must be positive|hidden_size is 0"),
    ("state_size", -3, r"-3"),
])
def test_a_family_config_value_of_the_wrong_type_is_named(tmp_path, key, value, named):
    folder = mamba_folder(tmp_path / "hf", {**HF_MAMBA_CONFIG, key: value})
    refused(folder, match=named)


@pytest.mark.parametrize("change, named", [
    ({"ssm_cfg": []}, r"ssm_cfg is \[\] \(a list\), expected an object"),
    ({"n_layer": "2"}, r"n_layer is '2' \(text\), expected a whole number"),
    ({"vocab_size": None}, r"vocab_size is null"),
    ({"d_model": 0}, r"d_model"),
    ({"ssm_cfg": {"d_state": "x", "d_conv": 4, "expand": 2}}, r"d_state is 'x' \(text\)"),
])
def test_a_mamba_ssm_config_value_of_the_wrong_type_is_named(tmp_path, change, named):
    config = {"d_model": 8, "n_layer": 2, "vocab_size": 12, "ssm_cfg": {"d_state": 4, "d_conv": 4, "expand": 2}}
    refused(mamba_folder(tmp_path / "ssm", {**config, **change}, ssm_layout=True), match=named)


@pytest.mark.parametrize("change, named", [
    ({"num_layers": "2"}, r"num_layers is '2' \(text\), expected a whole number"),
    ({"num_layers": 2.5}, r"num_layers is 2\.5"),
    ({"hidden_size": None}, r"hidden_size is null"),
    ({"bidirectional": "yes"}, r"bidirectional is 'yes' \(text\), expected true or false"),
    ({"key_map": ["a"]}, r"key_map must be a dict"),
])
def test_a_classic_config_value_of_the_wrong_type_is_named(tmp_path, change, named):
    p = char_lstm_pt(tmp_path / "m.pt")
    refused(p, config={"cell": "lstm", "num_layers": 1, "hidden_size": 4, "input_size": 3, **change}, match=named)


def test_a_shard_index_whose_weight_map_is_not_an_object_is_refused(tmp_path):
    folder = mamba_folder(tmp_path / "sharded")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    refused(folder / "model.safetensors.index.json", match="weight_map must be an object")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    refused(folder / "model.safetensors.index.json", match="not a file name in the folder")


# -- names: corrupted zip entry names, long and non-UTF-8 file names ---------------------------------
def test_a_bit_flip_in_a_zip_entry_name_is_a_load_error(tmp_path):
    honest = char_lstm_pt(tmp_path / "honest.pt")
    flipped = tmp_path / "flipped.pt"
    with zipfile.ZipFile(honest) as src, zipfile.ZipFile(flipped, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("honest/é.txt", b"x")  # a UTF-8 name: the zip marks it so
    data = flipped.read_bytes().replace("é".encode(), b"\xff\xfe")
    flipped.write_bytes(data)
    refused(flipped, match="not valid text")


def test_a_path_component_over_255_bytes_is_one_sentence(tmp_path):
    long = tmp_path / ("a" * 300 + ".pt")
    refused(long, match="longer than the 255 bytes")
    p = char_lstm_pt(tmp_path / "m.pt")
    refused(p, config=tmp_path / ("c" * 300 + ".json"), match="longer than the 255 bytes")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_file_whose_name_is_not_utf8_loads(tmp_path, suffix):
    raw = os.fsencode(tmp_path) + b"/mod\xffel" + suffix.encode()
    honest = tmp_path / f"honest{suffix}"
    if suffix == ".pt":
        char_lstm_pt(honest, chars="abcde")
    else:
        save_file(lstm_state(vocab=5), str(honest))
    os.rename(honest, raw)
    model = loaded(os.fsdecode(raw))
    assert model.num_layers == 1
    # and a broken one says so in a message that prints anywhere
    with open(raw, "wb") as f:
        f.write(b"\x80garbage")
    refused(os.fsdecode(raw), match="mod\ufffdel")


def test_a_folder_whose_name_is_not_utf8_loads(tmp_path):
    raw = os.fsencode(tmp_path) + b"/dir\xfe"
    folder = mamba_folder(tmp_path / "hf")
    shutil.move(folder, os.fsdecode(raw))
    assert loaded(os.fsdecode(raw)).config.n_layer == 2


# -- the helpers themselves ---------------------------------------------------------------------------
def test_stated_config_names_the_key_what_it_is_and_what_was_expected():
    from engine.models.family import StatedConfig

    c = StatedConfig({"n": "2", "eps": None, "flag": "yes", "sub": [1], "ok": 3.0, "big": 10**12}, "config.json")
    for call, words in [(lambda: c.whole("n"), "config.json: n is '2' (text), expected a whole number"),
                        (lambda: c.number("eps", 1e-5), "config.json: eps is null (null), expected a finite number"),
                        (lambda: c.flag("flag"), "config.json: flag is 'yes' (text), expected true or false"),
                        (lambda: c.mapping("sub"), "config.json: sub is [1] (a list), expected an object"),
                        (lambda: c.whole("big"), "big is 1000000000000, expected a whole number from 0 to"),
                        (lambda: c.whole("absent"), "config.json has no absent")]:
        with pytest.raises(LoadError) as info:
            call()
        assert words in str(info.value)
    assert c.whole("ok") == 3 and c.number("eps", 1e-5, nullable=True) is None and c.whole("absent", 7) == 7
    factors = StatedConfig({"expand": 1e308, "half": 0.5, "none": None}, "config.json")
    with pytest.raises(LoadError, match="expand is 1e\\+308, which makes a size of inf"):
        factors.scaled("expand", 16, 2.0)
    assert factors.scaled("half", 16, 2.0) == 8 and factors.scaled("none", 16, 2.0) == 32
    with pytest.raises(LoadError, match="is a list, expected an object"):
        StatedConfig([], "config.json")


def test_every_family_config_checks_its_fields_by_type():
    from engine.loading import FAMILIES
    from engine.models.family import FamilyConfig

    configs = {cls for module in FAMILIES for cls in vars(module).values()
               if isinstance(cls, type) and issubclass(cls, FamilyConfig) and cls is not FamilyConfig}
    assert len(configs) >= 10
    for cls in configs:
        layers = cls.LAYERS_FIELD
        with pytest.raises(ValueError, match=rf"{layers} is '2' \(text\), expected a whole number"):
            cls.from_dict({layers: "2"})


def test_safetensors_metadata_that_is_plain_text_is_kept(tmp_path):
    st = tmp_path / "m.safetensors"
    save_file(lstm_state(vocab=5), str(st), metadata={"note": "trained on [Shakespeare", "format": "pt"})
    assert loaded(st).num_layers == 1


def test_a_trace_file_with_an_unwritten_probe_is_refused_before_it_is_read(tmp_path):
    h5py = pytest.importorskip("h5py")
    from engine.hdf5 import TraceFileError

    model = loaded(char_lstm_pt(tmp_path / "m.pt", chars="abcde"))
    trace = engine.run(model, "abcab", probes="layers.0.h")
    engine.save_trace(trace, tmp_path / "t.h5")
    with h5py.File(tmp_path / "t.h5", "a") as f:
        del f["probes/layers.0.h"]
        f.create_dataset("probes/layers.0.h", shape=(20_000_000, 64), dtype="f4", chunks=(4096, 64))
    assert (tmp_path / "t.h5").stat().st_size < MB
    _, error, _, _ = bounded(lambda: engine.load_trace(tmp_path / "t.h5"))
    assert isinstance(error, TraceFileError) and "were ever written" in str(error), error
    assert "\n" not in str(error)
