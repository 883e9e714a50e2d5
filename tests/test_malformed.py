"""Malformed run files never crash deep inside: the package's error names the file and the problem.

First the cases of the issue one by one (truncated shard, wrong shape or dtype, run.json with
missing or extra fields, a newer format, metrics with missing rows, ...), then a hypothesis fuzz of
mutated run directories (truncation, byte flips, deletions, JSON field deletion / addition / value
changes, safetensors header edits, CSV edits): after every mutation each way of using the run
(``load_run``, metrics, summary, split, parameters, model, stacks, Fourier and grid analyses,
``verify``, the trainer's state loader) must either work or raise ``GrokinterpError``. The number of
inputs tried is printed at the end of the module (``GROKINTERP_FUZZ_EXAMPLES`` sets it; ``-m slow``
runs a longer fuzz).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grokinterp as g
from grokinterp.analysis.fourier import embed_fourier_norms
from grokinterp.analysis.keyfreqs import key_frequencies
from grokinterp.errors import GrokinterpError, RunError
from grokinterp.model.grid import grid_forward
from grokinterp.store.integrity import verify
from grokinterp.store.run import RunWarning
from grokinterp.training.loop import TrainLoop as _Trainer

CFG = g.make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, epochs=40, every=10, log_early=0,
                    flush_every=2, eval_every=10)
N_FUZZ = int(os.environ.get("GROKINTERP_FUZZ_EXAMPLES", "250"))
N_FUZZ_SLOW = 4000
_STATS = {"inputs": 0, "loaded": 0, "refused_at_load": 0, "steps_ok": 0, "steps_refused": 0}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return g.train(CFG, tmp_path_factory.mktemp("malformed") / "base", progress=False).path


@pytest.fixture
def run_dir(base, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _STATS["inputs"]:
        return
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            tr.write_line(f"\nfuzz: {_STATS['inputs']} mutated run directories tried; {_STATS['loaded']} loaded, "
                          f"{_STATS['refused_at_load']} refused by load_run; later steps: {_STATS['steps_ok']} "
                          f"worked, {_STATS['steps_refused']} raised GrokinterpError; 0 other exceptions")


# -- helpers --------------------------------------------------------------------------------------
def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunWarning)
        return g.load_run(path, **kw)


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _st_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8: 8 + n]), raw[8 + n:]


def _st_write(path: Path, header: dict, data: bytes, n_delta: int = 0) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) + n_delta) + h + data)


def _rewrite_shard(path: Path, fn) -> None:
    """Rewrite a shard's tensors (a dict name → numpy array) through ``fn``, as a valid safetensors file."""
    from safetensors.numpy import load_file, save_file

    tensors = {k: np.array(v) for k, v in load_file(str(path)).items()}
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "grokinterp-shard"})


def _shards(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "shards").glob("ckpt_*.safetensors"))


# -- one by one ------------------------------------------------------------------------------------
def _check_damaged_shard_left_out(run_dir: Path, base: Path, match: str) -> None:
    bad = _shards(run_dir)[1]
    with pytest.warns(RunWarning, match=match):
        run = g.load_run(run_dir)
    assert len(run.problems) == 1 and bad.name in run.problems[0]
    good = _load(base)
    assert run.epochs.tolist() == [0, 10, 40]  # shards hold (0, 10), (20, 30), (40): the middle one is gone
    for name in ("embed.W_E", "blocks.0.mlp.W_out"):  # the other checkpoints stay usable, unchanged
        assert torch.equal(run.stack(name), good.stack(name, run.epochs))
    with pytest.raises(RunError, match=match):
        g.load_run(run_dir, strict=True)


def test_truncated_shard_only_removes_its_checkpoints(run_dir, base):
    bad = _shards(run_dir)[1]
    bad.write_bytes(bad.read_bytes()[:-100])
    _check_damaged_shard_left_out(run_dir, base, "truncated")


def test_shard_with_wrong_shape(run_dir, base):
    _rewrite_shard(_shards(run_dir)[1], lambda t: t.update({"embed.W_E": t["embed.W_E"][:, :5]}))
    _check_damaged_shard_left_out(run_dir, base, r"embed\.W_E.*shape")


def test_shard_with_wrong_dtype(run_dir, base):
    _rewrite_shard(_shards(run_dir)[1], lambda t: t.update({"unembed.W_U": t["unembed.W_U"].astype(np.float64)}))
    _check_damaged_shard_left_out(run_dir, base, "dtype F64")


def test_shard_with_header_lies(run_dir, base):
    bad = _shards(run_dir)[1]
    header, data = _st_parts(bad)
    header["embed.W_E"]["data_offsets"] = [-8, header["embed.W_E"]["data_offsets"][1] - 8]
    _st_write(bad, header, data)
    _check_damaged_shard_left_out(run_dir, base, "byte range")
    header["embed.W_E"]["shape"] = [2 ** 62, 2 ** 62, 4]  # overflows int64 products
    _st_write(bad, header, data)
    _check_damaged_shard_left_out(run_dir, base, "embed.W_E")


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("seeds"), r"\['seeds'\] missing"),
    (lambda d: d.update(surprise=1), r"\['surprise'\] unexpected"),
    (lambda d: d.update(device="cpu"), "'device' has the wrong type"),
    (lambda d: d.update(format_version=99), "newer grokinterp"),
    (lambda d: d.update(format_version=True), "format_version"),
    (lambda d: d["config"]["model"].pop("d_mlp"), "missing field.*model.d_mlp"),
    (lambda d: d["config"]["train"].update(nesterov_momentum=0.9), "unexpected field.*train.nesterov_momentum"),
    (lambda d: (d["config"]["task"].update(p=10 ** 8), d["config"]["model"].update(p=10 ** 8)),
     r"task.p: must be at most 5000"),
    (lambda d: d["config"]["train"].update(epochs=10 ** 15), "implausible"),
    (lambda d: d["config"]["model"].update(n_layers=10 ** 9), "implausible model size"),
    (lambda d: d.update(n_train=3), "n_train = 3"),
])
def test_run_json_problems_name_the_file_and_field(run_dir, edit, match):
    _edit_json(run_dir / "run.json", edit)
    with pytest.raises(RunError, match=match) as info:
        _load(run_dir)
    assert "run.json" in str(info.value) or "split.safetensors" in str(info.value)


def test_run_json_that_is_not_json(run_dir):
    (run_dir / "run.json").write_text("[" * 100_000)  # would exhaust the recursion limit
    with pytest.raises(RunError, match="run.json: run metadata is not valid JSON"):
        _load(run_dir)
    (run_dir / "run.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(RunError, match="not valid JSON"):
        _load(run_dir)


def test_metrics_with_missing_rows(run_dir):
    path = run_dir / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:10] + lines[11:]))  # epoch 9 dropped
    run = _load(run_dir)
    with pytest.raises(RunError, match=r"metrics.csv: metrics table is inconsistent: missing rows from epoch 9"):
        _ = run.metrics
    assert "metrics.csv" in run.summary()["metrics_error"]
    assert run.stack("embed.W_E").shape[0] == len(run.epochs)  # checkpoints stay usable
    path.write_text("".join(lines[:-5]))  # the last rows lost: progress.json says they were trained
    with pytest.raises(RunError, match="missing rows: it ends at epoch 35"):
        _ = _load(run_dir).metrics
    path.write_text("".join(lines).replace("\n10,", "\nten,", 1))
    with pytest.raises(RunError, match="non-numeric|non-integers"):
        _ = _load(run_dir).metrics
    path.write_text("".join(lines).replace("\n10,", "\nnan,", 1))
    with pytest.raises(RunError, match="non-integers"):
        _ = _load(run_dir).metrics


def test_split_problems(run_dir):
    path = run_dir / "split.safetensors"
    from safetensors.numpy import load_file, save_file

    good = {k: np.array(v) for k, v in load_file(str(path)).items()}
    for trn, tst, match in [
        (good["train_pairs"], np.concatenate([good["test_pairs"], good["train_pairs"][:1]]), "overlap"),
        (good["train_pairs"][1:], good["test_pairs"], "n_train"),
        (good["train_pairs"].astype(np.int32), good["test_pairs"], "int64"),
    ]:
        save_file({"train_pairs": trn, "test_pairs": tst}, str(path))
        with pytest.raises(RunError, match=match):
            _load(run_dir)
    # the same counts, but a pair repeated in place of another
    trn = good["train_pairs"].copy()
    trn[0] = trn[1]
    save_file({"train_pairs": trn, "test_pairs": good["test_pairs"]}, str(path))
    with pytest.raises(RunError, match="do not partition"):
        _load(run_dir)


def test_progress_file_problems(run_dir):
    (run_dir / "progress.json").write_text("[1, 2]")
    run = _load(run_dir)
    with pytest.raises(RunError, match="progress.json: progress file must hold a JSON object"):
        run.summary()
    (run_dir / "progress.json").write_text('{"epoch": "forty", "finished": true}')
    with pytest.raises(RunError, match="'epoch' must be"):
        _ = _load(run_dir).finished


def test_state_file_problems_stop_resume_cleanly(run_dir):
    state = run_dir / "state.safetensors"
    raw = state.read_bytes()
    progress = json.loads((run_dir / "progress.json").read_text())
    progress["finished"] = False  # make it look resumable
    (run_dir / "progress.json").write_text(json.dumps(progress))
    header, data = _st_parts(state)
    meta = {**header["__metadata__"], "finished": "false"}
    from safetensors.torch import load_file, save_file

    good = {k: v.clone() for k, v in load_file(str(state)).items()}  # not views of the file we rewrite

    def save(tensors, **kw):
        save_file(tensors, str(state), metadata={**meta, **kw})

    for mutate, match in [
        (lambda: state.write_bytes(raw[: len(raw) // 2]), "truncated"),
        (lambda: save({k: v for k, v in good.items() if k != "rng/torch_cpu"}), "random-number state"),
        (lambda: save(good, resume_epoch="999"), "outside the run"),
        (lambda: save(good, resume_epoch="x"), "no resume epoch"),
        (lambda: save({**good, "opt/embed.W_E/exp_avg": good["opt/embed.W_E/exp_avg"][:3]}),
         "optimizer state 'opt/embed.W_E/exp_avg'"),
        (lambda: save({**good, "param/embed.W_E": good["param/embed.W_E"][:3]}), "embed.W_E .*wrong shape"),
        # found by the fuzz: a renamed optimizer step reached torch's load_state_dict (KeyError 'step')
        (lambda: save({k: v for k, v in good.items() if k != "opt/unembed.W_U/step"}), "unembed.W_U is incomplete"),
        (lambda: save({**good, "opt/embed.W_E/exp_avg": good["opt/embed.W_E/exp_avg"].double()}), "dtype"),
    ]:
        mutate()
        with pytest.raises(RunError, match=match):
            g.resume(run_dir, progress=False)


def test_analyses_work_on_the_checkpoints_that_remain(run_dir, base):
    bad = _shards(run_dir)[0]
    bad.write_bytes(b"\x00" * 3)
    run = _load(run_dir)
    assert len(run.problems) == 1 and len(run.epochs) == len(_load(base).epochs) - 2
    norms = embed_fourier_norms(run.stack("embed.W_E"), run.p)
    assert norms.shape == (len(run.epochs), run.p // 2 + 1)
    out = grid_forward(run.stacks(), run.config.model)
    assert out.logits.shape[0] == len(run.epochs)
    key_frequencies(run.params(-1))
    with pytest.raises(RunError, match="nearest"):
        run.params(0)  # the left-out checkpoint says so by name


# -- fuzz -----------------------------------------------------------------------------------------
def _json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(allow_nan=True),
                        st.text(max_size=8), st.sampled_from([0, -1, 1, 2, 3, 10 ** 6, 2 ** 31, 2 ** 63]))
    return st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), c, max_size=3)),
                        max_leaves=6)


def _mutate_json(obj, data):
    """Delete, add or change one field somewhere in a JSON document."""
    node = obj
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans(), label="descend"):
        key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
        if not isinstance(node[key], (dict, list)) or not node[key]:
            break
        node = node[key]
    if isinstance(node, dict):
        action = data.draw(st.sampled_from(["delete", "add", "change"]))
        if action == "add" or not node:
            node[data.draw(st.text(max_size=10), label="new key")] = data.draw(_json_values())
        else:
            key = data.draw(st.sampled_from(sorted(node)))
            if action == "delete":
                del node[key]
            else:
                node[key] = data.draw(_json_values())
    elif isinstance(node, list) and node:
        i = data.draw(st.integers(0, len(node) - 1))
        node[i] = data.draw(_json_values())
    else:
        return data.draw(_json_values())
    return obj


def _mutate_header(header, data):
    names = sorted(header)
    name = data.draw(st.sampled_from(names), label="tensor")
    entry = header[name]
    if name == "__metadata__" or not isinstance(entry, dict):
        header[name] = _mutate_json(entry, data)
        return
    action = data.draw(st.sampled_from(["dtype", "shape", "offsets", "delete", "rename", "json"]))
    if action == "dtype":
        entry["dtype"] = data.draw(st.sampled_from(["F16", "F64", "I64", "I32", "U8", "BOOL", "BF16", "XX", 5]))
    elif action == "shape":
        entry["shape"] = data.draw(st.lists(st.one_of(st.integers(-2, 70), st.integers(0, 2 ** 64)), max_size=4))
    elif action == "offsets":
        entry["data_offsets"] = data.draw(st.lists(st.integers(-(2 ** 40), 2 ** 40), max_size=3))
    elif action == "delete":
        del header[name]
    elif action == "rename":
        header[data.draw(st.text(max_size=12))] = header.pop(name)
    else:
        header[name] = _mutate_json(entry, data)


def _mutate_file(root: Path, rel: str, data) -> None:
    path = root / rel
    raw = path.read_bytes()
    kinds = ["truncate", "flip", "delete", "append"]
    if rel.endswith(".json"):
        kinds += ["json"] * 4
    if rel.endswith(".safetensors"):
        kinds += ["header"] * 4
    if rel.endswith(".csv"):
        kinds += ["csv"] * 3
    kind = data.draw(st.sampled_from(kinds), label=f"mutation of {rel}")
    try:  # a structured edit needs a parseable file (an earlier mutation may have broken it)
        if kind == "json":
            parsed = json.loads(raw)
        elif kind == "header":
            (n,) = struct.unpack("<Q", raw[:8])
            header = json.loads(raw[8: 8 + n])
            if not isinstance(header, dict) or not header:
                raise ValueError
        elif kind == "csv":
            lines = raw.decode().splitlines(keepends=True)
            if not lines:
                raise ValueError
    except (ValueError, struct.error, RecursionError):
        kind = "flip"
    if kind == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))])
    elif kind == "flip":
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            if buf:
                i = data.draw(st.integers(0, len(buf) - 1))
                buf[i] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(buf))
    elif kind == "delete":
        path.unlink()
    elif kind == "append":
        path.write_bytes(raw + data.draw(st.binary(min_size=1, max_size=64)))
    elif kind == "json":
        path.write_text(json.dumps(_mutate_json(parsed, data)))
    elif kind == "header":
        _mutate_header(header, data)
        h = json.dumps(header).encode()
        delta = data.draw(st.sampled_from([0, 0, 0, -1, 1, 8, -len(h)]))
        path.write_bytes(struct.pack("<Q", max(len(h) + delta, 0)) + h + raw[8 + n:])
    elif kind == "csv":
        action = data.draw(st.sampled_from(["drop", "dup", "cell", "swap"]))
        i = data.draw(st.integers(0, len(lines) - 1))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "cell":
            cells = lines[i].rstrip("\n").split(",")
            j = data.draw(st.integers(0, len(cells) - 1))
            cells[j] = data.draw(st.sampled_from(["", "nan", "x", "1e400", "-1", "99999999999999999999", '"']))
            lines[i] = ",".join(cells) + "\n"
        else:
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        path.write_text("".join(lines))


def _exercise(path: Path) -> None:
    """Use the run every way a researcher would; each step may only work or raise GrokinterpError."""
    def step(fn):
        try:
            fn()
            _STATS["steps_ok"] += 1
        except GrokinterpError:
            _STATS["steps_refused"] += 1

    step(lambda: verify(path))
    try:
        run = _load(path)
    except GrokinterpError:
        _STATS["refused_at_load"] += 1
        return
    _STATS["loaded"] += 1
    step(lambda: run.metrics)
    step(lambda: run.evals)
    step(run.summary)
    step(lambda: repr(run))
    step(run.train_data)
    step(run.test_data)
    if len(run.epochs):
        step(lambda: run.model(-1)(torch.tensor([[1, 2, run.p]])))
        step(lambda: run.stacks())
        step(lambda: list(run.iter_chunks(2)))
        step(lambda: embed_fourier_norms(run.stack("embed.W_E"), run.p))
        step(lambda: grid_forward(run.stacks(epochs=run.epochs[-2:]), run.config.model))
        step(lambda: key_frequencies(run.params(-1)))
    state = path / "state.safetensors"
    if state.exists():
        def load_state():
            rng = torch.get_rng_state()
            try:
                trn, tst = run.split_pairs()
                _Trainer(run.config, run.path, torch.device("cpu"), trn, tst).load_state(state)
            finally:
                torch.set_rng_state(rng)
        step(load_state)


def _fuzz_one(base: Path, data) -> None:
    files = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    root = Path(tempfile.mkdtemp(prefix="gi-fuzz-"))
    try:
        run = root / "run"
        shutil.copytree(base, run)
        for _ in range(data.draw(st.integers(1, 3), label="number of mutations")):
            present = [f for f in files if (run / f).exists()]
            if not present:
                break
            _mutate_file(run, data.draw(st.sampled_from(present), label="file"), data)
        _STATS["inputs"] += 1
        _exercise(run)
    finally:
        shutil.rmtree(root, ignore_errors=True)


_FUZZ_SETTINGS = dict(deadline=None, database=None, print_blob=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.function_scoped_fixture])


@settings(max_examples=N_FUZZ, derandomize=True, **_FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_mutated_run_directories(base, data):
    _fuzz_one(base, data)


@pytest.mark.slow
@settings(max_examples=N_FUZZ_SLOW, **_FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_mutated_run_directories_long(base, data):
    _fuzz_one(base, data)
