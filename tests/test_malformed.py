"""Malformed run files never crash deep inside, never hang, and never load wrong data silently.

First the cases of the issue one by one (truncated shard, wrong shape or dtype, run.json with
missing or extra fields, a newer format, metrics with missing rows, ...), each both checked on read
(the manifest catches it) and trusted (``check=False``: the structural checks name the field).

Then a hypothesis fuzz of mutated run directories with an **oracle**: the original run's every
tensor and table, loaded once from the intact run. Mutations: truncation, byte flips (anywhere, or
in a tensor's data), deletion, appended bytes, JSON structure and value edits, safetensors header
edits, offsets swapped between same-shaped tensors or aliased, CSV structure and value edits, a
FIFO / directory / socket in place of a file, symbolic links to ``/dev/zero``, ``/dev/urandom``,
``/dev/null`` or to a copy outside the run, shards swapped in from another run of the same config
(bit-identical twin, or another seed), shards swapped with each other, relabelled epochs (with the
manifest left alone, or rewritten to match), a shard deleted together with its manifest entry.
After each mutated directory, every way of using the run (``load_run``, metrics, progress, split and
data, parameters at every epoch, the model's forward pass, stacks and chunks, the Fourier and grid
analyses, the training state the trainer resumes from, ``verify``, ``grokinterp info``) is run under
a timeout, and each result is compared with the oracle. Each must: return data identical to the
original, or raise ``GrokinterpError``; a checkpoint may only go missing with a ``RunWarning`` naming
its file. Counted and printed at the end: silent wrong loads, hangs, foreign (non-GrokinterpError)
exceptions, and whether ``verify`` flagged every changed directory (all must be 0 / yes); and a clean
run loads with zero warnings. ``GROKINTERP_FUZZ_EXAMPLES`` sets the number of inputs (default 250);
``-m slow`` runs 5,000.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import cli_here, deadline, make_socket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grokinterp as g
from grokinterp.analysis.fourier import embed_fourier_norms
from grokinterp.analysis.keyfreqs import key_frequencies
from grokinterp.errors import GrokinterpError, RunError
from grokinterp.model.grid import grid_forward
from grokinterp.store import layout as _io
from grokinterp.store.integrity import verify
from grokinterp.store.run import RunWarning
from grokinterp.training.loop import TrainLoop as _Trainer

CFG = g.make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, epochs=40, every=10, log_early=0,
                    flush_every=2, eval_every=10)
N_FUZZ = int(os.environ.get("GROKINTERP_FUZZ_EXAMPLES", "250"))
N_FUZZ_SLOW = 5000
CASE_TIMEOUT_S = 60.0  # a case takes well under a second; anything near this is a hang
_STATS = {"inputs": 0, "mutations": 0, "loaded": 0, "refused_at_load": 0, "identical": 0, "refused": 0,
          "wrong_silent": 0, "wrong_warned": 0, "hangs": 0, "foreign": 0, "verify_missed": 0, "changed": 0}
_KINDS: dict[str, int] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run every case mutates, a bit-identical twin (same config, trained again) and a sibling
    (same config but the init seed: same file names and shapes, other values)."""
    root = tmp_path_factory.mktemp("malformed")
    base = g.train(CFG, root / "base", progress=False).path
    twin = g.train(CFG, root / "twin", progress=False).path
    sibling = g.train(CFG.replace(init_seed=1), root / "sibling", progress=False).path
    return base, twin, sibling


@pytest.fixture(scope="module")
def base(runs):
    return runs[0]


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
            s = _STATS
            tr.write_line(
                f"\nfuzz with oracle: {s['inputs']} mutated run directories ({s['mutations']} mutations; "
                f"{s['changed']} changed some bytes); {s['loaded']} loaded, {s['refused_at_load']} refused by "
                f"load_run; steps compared with the original: {s['identical']} identical, {s['refused']} raised "
                f"GrokinterpError; silent wrong loads {s['wrong_silent']}, wrong but warned {s['wrong_warned']}, "
                f"hangs {s['hangs']}, foreign exceptions {s['foreign']}, changed directories verify passed "
                f"{s['verify_missed']}")
            tr.write_line("fuzz mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(_KINDS.items())))


# -- helpers --------------------------------------------------------------------------------------
def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunWarning)
        return g.load_run(path, **kw)


def _trusted(path, **kw):
    """Load without the manifest checks: what the structural checks alone catch."""
    return _load(path, check=False, **kw)


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
    """Checked on read, the manifest catches the damage (by size at load, by digest at first use);
    trusted, the structural checks catch it. Either way only the shard's own checkpoints go, with
    a warning naming the file and the epochs."""
    bad = _shards(run_dir)[1]
    good = _load(base)
    for check, why in ((True, "damaged or was replaced|the manifest records"), (False, match)):
        with pytest.warns(RunWarning, match=rf"{bad.name}: .*({why}).*epochs 20, 30 are left out"):
            run = g.load_run(run_dir, check=check)
            run.check()
        assert len(run.problems) == 1 and bad.name in run.problems[0]
        assert run.epochs.tolist() == [0, 10, 40]  # shards hold (0, 10), (20, 30), (40): the middle one is gone
        for name in ("embed.W_E", "blocks.0.mlp.W_out"):  # the other checkpoints stay usable, unchanged
            assert torch.equal(run.stack(name), good.stack(name, run.epochs))
        with pytest.raises(RunError, match=why):
            g.load_run(run_dir, strict=True, check=check)


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
    (lambda d: d["config"]["train"].update(epochs=10 ** 15), r"train.epochs: must lie in \[0, 100000000\]"),
    (lambda d: d["config"]["model"].update(n_layers=10 ** 9), "model.n_layers: must be at most 1024"),
    (lambda d: d.update(n_train=3), "n_train = 3"),
])
def test_run_json_problems_name_the_file_and_field(run_dir, edit, match):
    _edit_json(run_dir / "run.json", edit)
    with pytest.raises(RunError, match="run.json: run metadata is damaged or was replaced"):
        _load(run_dir)  # checked on read: the manifest catches any edit
    with pytest.raises(RunError, match=match) as info:
        _trusted(run_dir)  # trusted: the structural check names the field
    assert "run.json" in str(info.value) or "split.safetensors" in str(info.value)


def test_run_json_that_is_not_json(run_dir):
    (run_dir / "run.json").write_text("[" * 100_000)  # would exhaust the recursion limit
    with pytest.raises(RunError, match="run.json: run metadata is not valid JSON"):
        _trusted(run_dir)
    (run_dir / "run.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(RunError, match="not valid JSON"):
        _trusted(run_dir)
    with pytest.raises(RunError, match="run.json: run metadata is damaged or was replaced"):
        _load(run_dir)


def test_metrics_with_missing_rows(run_dir):
    path = run_dir / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:10] + lines[11:]))  # epoch 9 dropped
    with pytest.raises(RunError, match="metrics.csv: metrics table is damaged or was replaced"):
        _ = _load(run_dir).metrics
    path.write_text("".join(lines[:9]) + lines[9].replace("0.", "0.5", 1) + "".join(lines[10:]))  # a value edited
    with pytest.raises(RunError, match="metrics.csv: metrics table is damaged or was replaced"):
        _ = _load(run_dir).metrics
    path.write_text("".join(lines[:10] + lines[11:]))
    run = _trusted(run_dir)
    with pytest.raises(RunError, match=r"metrics.csv: metrics table is inconsistent: missing rows from epoch 9"):
        _ = run.metrics
    assert "metrics.csv" in run.summary()["metrics_error"]
    assert run.stack("embed.W_E").shape[0] == len(run.epochs)  # checkpoints stay usable
    path.write_text("".join(lines[:-5]))  # the last rows lost: progress.json says they were trained
    with pytest.raises(RunError, match="missing rows: it ends at epoch 35"):
        _ = _trusted(run_dir).metrics
    path.write_text("".join(lines).replace("\n10,", "\nten,", 1))
    with pytest.raises(RunError, match="non-numeric|non-integers"):
        _ = _trusted(run_dir).metrics
    path.write_text("".join(lines).replace("\n10,", "\nnan,", 1))
    with pytest.raises(RunError, match="non-integers"):
        _ = _trusted(run_dir).metrics


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
        with pytest.raises(RunError, match="split.safetensors: split is damaged or was replaced"):
            _load(run_dir)
        with pytest.raises(RunError, match=match):
            _trusted(run_dir)
    # the same counts, but a pair repeated in place of another
    trn = good["train_pairs"].copy()
    trn[0] = trn[1]
    save_file({"train_pairs": trn, "test_pairs": good["test_pairs"]}, str(path))
    with pytest.raises(RunError, match="do not partition"):
        _trusted(run_dir)


def test_progress_file_problems(run_dir):
    (run_dir / "progress.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="progress.json: progress file is damaged or was replaced"):
        _load(run_dir).summary()
    run = _trusted(run_dir)
    with pytest.raises(RunError, match="progress.json: progress file must hold a JSON object"):
        run.summary()
    (run_dir / "progress.json").write_text('{"epoch": "forty", "finished": true}')
    with pytest.raises(RunError, match="'epoch' must be"):
        _ = _trusted(run_dir).finished


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
        with pytest.raises(RunError, match="state.safetensors: training state is damaged or was replaced"):
            g.resume(run_dir, progress=False)  # checked on read: the manifest refuses it first
        with pytest.raises(RunError, match=match):
            g.resume(run_dir, progress=False, check=False)


def test_analyses_work_on_the_checkpoints_that_remain(run_dir, base):
    bad = _shards(run_dir)[0]
    bad.write_bytes(b"\x00" * 3)
    run = _load(run_dir)
    assert len(run.problems) == 1 and len(run.epochs) == len(_load(base).epochs) - 2
    assert "epochs 0, 10 are left out" in run.problems[0]
    norms = embed_fourier_norms(run.stack("embed.W_E"), run.p)
    assert norms.shape == (len(run.epochs), run.p // 2 + 1)
    out = grid_forward(run.stacks(), run.config.model)
    assert out.logits.shape[0] == len(run.epochs)
    key_frequencies(run.params(-1))
    with pytest.raises(RunError, match="nearest"):
        run.params(0)  # the left-out checkpoint says so by name


# -- fuzz with an oracle ---------------------------------------------------------------------------
class _Hang(BaseException):
    """A case ran past its timeout (a BaseException: no ``except Exception`` in the package swallows it)."""


def _timeout(seconds: float):
    return deadline(seconds, lambda s: _Hang())


_PROBE = torch.tensor([[1, 2, CFG.task.p], [3, 7, CFG.task.p], [10, 0, CFG.task.p]])


def _bits(x) -> bytes:
    a = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    return np.ascontiguousarray(a).tobytes() + str(a.dtype).encode() + str(a.shape).encode()


class _Oracle(dict):
    def __repr__(self) -> str:  # hypothesis prints fixtures of a failing case: keep it short
        return "<the intact run's tensors and tables>"


@pytest.fixture(scope="module")
def oracle(runs):
    """Everything the intact run holds, loaded once; a clean run loads with zero warnings."""
    base = runs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = g.load_run(base, strict=True)
        out = {
            "epochs": run.epochs.tolist(),
            "params": {int(e): {k: _bits(v) for k, v in run.params(int(e)).items()} for e in run.epochs},
            "logits": {int(e): _bits(run.model(int(e))(_PROBE)) for e in run.epochs},
            "metrics": _bits(run.metrics.to_numpy(dtype=np.float64)),
            "progress": run.progress,
            "split": tuple(_bits(a) for a in run.split_pairs()),
            "data": tuple(_bits(t) for t in (*run.train_data(), *run.test_data())),
            "info": run.info,
        }
        meta, state = run.training_state()
        out["state"] = (meta, {k: _bits(v) for k, v in state.items()})
    out["tree"] = _tree(base)
    return _Oracle(out)


def _only_optional_digests_dropped(tree: dict[str, tuple], ref: dict[str, tuple]) -> bool:
    """The only difference is manifest entries without their ``xxh3_128`` digest: a manifest as release
    0.1.0 wrote them (sha256 only), still a true description of intact files, which verify must pass."""
    diff = {k for k in set(tree) | set(ref) if tree.get(k) != ref.get(k)}
    m = _io.MANIFEST_JSON
    if diff != {m} or (tree.get(m) or ("",))[0] != "file" or (ref.get(m) or ("",))[0] != "file":
        return False
    try:
        got, want = (json.loads(t[m][1]) for t in (tree, ref))
    except ValueError:
        return False
    if not (isinstance(got, dict) and isinstance(got.get("files"), dict) and set(got) == set(want)
            and all(got[k] == want[k] for k in want if k != "files") and set(got["files"]) == set(want["files"])):
        return False

    def dropped(g, w) -> bool:  # g is w, or w without its xxh3_128 digest (not a changed value)
        return g == w or g == {d: v for d, v in w.items() if d != "xxh3_128"}

    return got != want and all(dropped(got["files"][f], want["files"][f]) for f in want["files"])


def _tree(root: Path) -> dict[str, tuple]:
    """What a directory holds, without following links: ``{relpath: (kind, contents or target)}``."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isfile(full) and not os.path.islink(full) and st.st_mode & 0o170000 == 0o100000:
                with open(full, "rb") as f:
                    out[rel] = ("file", f.read())
            else:
                out[rel] = ("special", st.st_mode & 0o170000)
    return out


# -- mutations --
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


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


def _edit_json_value(obj, data):
    """Change one leaf to another value of the same type: the file stays valid (an edited value)."""
    leaves = [(p, v) for p, v in _leaves(obj) if p]
    if not leaves:
        return obj
    path, v = data.draw(st.sampled_from(leaves), label="leaf")
    if isinstance(v, bool):
        new = not v
    elif isinstance(v, int):
        new = v + data.draw(st.sampled_from([1, -1, 5, 1000]))
    elif isinstance(v, float):
        new = v * 1.5 + 1e-3
    elif isinstance(v, str):
        new = v + "x" if v else "x"
    else:
        new = 0
    node = obj
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = new
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


def _same_shaped_pair(header, data):
    """Two tensors of one dtype and shape (e.g. W_Q and W_K), or None."""
    groups: dict[str, list[str]] = {}
    for k, v in header.items():
        if k != "__metadata__" and isinstance(v, dict):
            groups.setdefault(json.dumps([v.get("dtype"), v.get("shape")]), []).append(k)
    pairs = [sorted(v)[:2] for v in groups.values() if len(v) >= 2]
    return data.draw(st.sampled_from(pairs), label="pair") if pairs else None


def _bless(root: Path, rel: str) -> None:
    """Rewrite the manifest entry of ``rel`` to match the file (a consistent forgery), or drop it."""
    path = root / "manifest.json"
    if path.is_symlink() or not path.is_file():
        return  # an earlier mutation replaced the manifest: nothing to rewrite
    try:
        m = json.loads(path.read_text())
        files = m["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return
    if not isinstance(files, dict):
        return
    target = root / rel
    if target.is_file() and not target.is_symlink():
        files[rel] = _io.digest_entry(target.read_bytes())
    else:
        files.pop(rel, None)
    path.write_text(json.dumps(m))


_ANY = ["truncate", "flip", "delete", "append", "fifo", "dev_symlink", "outside_symlink", "directory", "socket"]


def _kinds_for(rel: str) -> list[str]:
    kinds = list(_ANY)
    if rel.endswith(".json"):
        kinds += ["json"] * 3 + ["json_value"] * 3
    if rel.endswith(".safetensors"):
        kinds += ["header"] * 3 + ["data_flip"] * 3 + ["offsets_swap"] * 2 + ["offsets_alias"]
    if rel.startswith("shards/"):
        kinds += ["swap_twin", "swap_sibling", "swap_within", "relabel", "relabel_blessed", "delete_blessed"] * 2
    if rel.endswith(".csv"):
        kinds += ["csv"] * 3 + ["csv_value"] * 3
    if rel == "shards/":
        kinds = ["fifo", "outside_symlink", "delete", "dev_symlink"]
    return kinds


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _mutate_file(root: Path, rel: str, data, others: tuple[Path, Path], scratch: Path, kind: str | None = None) -> str:
    """Apply one mutation to ``root / rel`` (of ``kind``, or one drawn); returns its kind."""
    path = root / rel.rstrip("/")
    if kind is None:
        kind = data.draw(st.sampled_from(_kinds_for(rel)), label=f"mutation of {rel}")
    is_file = path.is_file() and not path.is_symlink()
    raw = path.read_bytes() if is_file else b""
    structured = {"json", "json_value", "header", "data_flip", "offsets_swap", "offsets_alias", "csv", "csv_value",
                  "relabel", "relabel_blessed", "truncate", "flip", "append"}
    if kind in structured and not is_file:
        kind = "delete"
    try:  # a structured edit needs a parseable file (an earlier mutation may have broken it)
        if kind in ("json", "json_value"):
            parsed = json.loads(raw)
        elif kind in ("header", "data_flip", "offsets_swap", "offsets_alias"):
            (n,) = struct.unpack("<Q", raw[:8])
            header = json.loads(raw[8: 8 + n])
            if not isinstance(header, dict) or not header:
                raise ValueError
        elif kind in ("csv", "csv_value"):
            lines = raw.decode().splitlines(keepends=True)
            if len(lines) < 2:
                raise ValueError
        elif kind in ("relabel", "relabel_blessed"):
            from safetensors.numpy import load

            tensors = {k: np.array(v) for k, v in load(raw).items()}
            if "epochs" not in tensors or not len(tensors["epochs"]):
                raise ValueError
    except (ValueError, struct.error, RecursionError, UnicodeDecodeError, Exception):
        kind = "flip" if is_file and raw else "delete"
    if kind == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))])
    elif kind == "flip":
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            if buf:
                i = data.draw(st.integers(0, len(buf) - 1))
                buf[i] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(buf))
    elif kind == "data_flip":  # in a tensor's bytes: the header stays valid (the W_E example)
        start = 8 + n
        buf = bytearray(raw)
        if len(buf) > start:
            i = data.draw(st.integers(start, len(buf) - 1))
            buf[i] ^= data.draw(st.sampled_from([0x01, 0x40, 0x80, 0xFF]))
        path.write_bytes(bytes(buf))
    elif kind == "delete":
        _remove(path)
    elif kind == "append":
        path.write_bytes(raw + data.draw(st.binary(min_size=1, max_size=64)))
    elif kind == "json":
        path.write_text(json.dumps(_mutate_json(parsed, data)))
    elif kind == "json_value":
        path.write_text(json.dumps(_edit_json_value(parsed, data), indent=2) + "\n")
    elif kind in ("header", "offsets_swap", "offsets_alias"):
        delta = 0
        if kind == "header":
            _mutate_header(header, data)
            delta = data.draw(st.sampled_from([0, 0, 0, -1, 1, 8, -10 ** 6]))
        else:
            pair = _same_shaped_pair(header, data)
            if pair is not None:
                a, b = pair
                if kind == "offsets_swap":
                    header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
                else:
                    header[b]["data_offsets"] = list(header[a]["data_offsets"])
        h = json.dumps(header).encode()
        h += b" " * ((-len(h)) % 8) if kind != "header" else b""
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
    elif kind == "csv_value":  # one digit of one number: the table stays valid
        i = data.draw(st.integers(1, len(lines) - 1))
        digits = [k for k, ch in enumerate(lines[i]) if ch.isdigit()]
        if digits:
            k = data.draw(st.sampled_from(digits))
            lines[i] = lines[i][:k] + str((int(lines[i][k]) + data.draw(st.integers(1, 9))) % 10) + lines[i][k + 1:]
        path.write_text("".join(lines))
    elif kind == "fifo":
        _remove(path)
        os.mkfifo(path)
    elif kind == "socket":
        _remove(path)
        make_socket(path)
    elif kind == "directory":
        _remove(path)
        path.mkdir()
    elif kind == "dev_symlink":
        _remove(path)
        path.symlink_to(data.draw(st.sampled_from(["/dev/zero", "/dev/urandom", "/dev/null"])))
    elif kind == "outside_symlink":  # identical contents, but outside the run
        copy = scratch / f"outside-{len(list(scratch.iterdir()))}"
        if path.is_dir() and not path.is_symlink():
            shutil.move(str(path), str(copy))
        elif is_file:
            copy.write_bytes(raw)
            path.unlink()
        else:
            _remove(path)
            copy.write_bytes(b"{}")
        path.symlink_to(copy)
    elif kind in ("swap_twin", "swap_sibling"):
        src = others[0 if kind == "swap_twin" else 1] / rel
        _remove(path)
        shutil.copyfile(src, path)
    elif kind == "swap_within":
        shards = sorted(p for p in (root / "shards").glob("ckpt_*") if p.is_file() and not p.is_symlink()
                        and p != path)
        if shards and is_file:
            other = data.draw(st.sampled_from(shards), label="swap with")
            other_raw = other.read_bytes()
            other.write_bytes(raw)
            path.write_bytes(other_raw)
    elif kind in ("relabel", "relabel_blessed"):
        from safetensors.numpy import save

        ep = tensors["epochs"]
        i = data.draw(st.integers(0, len(ep) - 1))
        ep[i] += data.draw(st.sampled_from([5, -5, 1, 10]))
        path.write_bytes(save(tensors, metadata={"format": "grokinterp-shard"}))
        if kind == "relabel_blessed":
            _bless(root, rel)
    elif kind == "delete_blessed":
        _remove(path)
        _bless(root, rel)
    return kind


# -- the cases --
class _Case:
    """One mutated run used every way, each result compared with the oracle."""

    def __init__(self, path: Path, oracle: dict, mutated: set[str]):
        self.path, self.oracle, self.mutated = path, oracle, mutated
        self.failures: list[str] = []
        self.caught: list = []  # the warnings recorded while the case runs

    def _warned(self) -> bool:
        return any(issubclass(w.category, RunWarning) and ("left out" in str(w.message) or "damaged" in str(w.message))
                   for w in self.caught)

    def step(self, name: str, fn, same=None):
        """Run one use of the run; ``same(value)`` says whether the value equals the original."""
        try:
            value = fn()
        except GrokinterpError:
            _STATS["refused"] += 1
            return None
        except _Hang:
            raise
        except Exception as e:  # noqa: BLE001 - anything else is a finding
            _STATS["foreign"] += 1
            self.failures.append(f"{name}: foreign exception {type(e).__name__}: {str(e)[:300]}")
            return None
        if same is not None:
            if same(value):
                _STATS["identical"] += 1
            elif self._warned():
                _STATS["wrong_warned"] += 1
                self.failures.append(f"{name}: data differs from the original (a warning was given)")
            else:
                _STATS["wrong_silent"] += 1
                self.failures.append(f"{name}: SILENT WRONG DATA (no warning, no error)")
        return value

    def _params_same(self, e: int, params: dict) -> bool:
        ref = self.oracle["params"].get(int(e))
        return ref is not None and {k: _bits(v) for k, v in params.items()} == ref

    def _stack_same(self, name: str, epochs, stack) -> bool:
        return all(self.oracle["params"].get(int(e), {}).get(name) == _bits(stack[i]) for i, e in enumerate(epochs))

    def run(self, changed: bool) -> None:
        o = self.oracle
        code = self.step("grokinterp verify", lambda: _cli_quiet("verify", self.path))
        if code is not None:
            if changed and code == 0:
                _STATS["verify_missed"] += 1
                self.failures.append("verify: exit 0 on a changed run directory")
            if not changed and code != 0:
                self.failures.append(f"verify: exit {code} on an unchanged run directory")
        self.step("verify()", lambda: verify(self.path))
        run = self.step("load_run", lambda: g.load_run(self.path),
                        lambda r: r.info == o["info"] and set(r.epochs.tolist()) <= set(o["epochs"]))
        if run is None:
            _STATS["refused_at_load"] += 1
            return
        _STATS["loaded"] += 1
        self.step("split", run.split_pairs, lambda v: tuple(_bits(a) for a in v) == o["split"])
        self.step("data", lambda: (*run.train_data(), *run.test_data()),
                  lambda v: tuple(_bits(t) for t in v) == o["data"])
        self.step("progress", lambda: run.progress, lambda v: v == o["progress"])
        self.step("metrics", lambda: run.metrics, lambda v: _bits(v.to_numpy(dtype=np.float64)) == o["metrics"])
        self.step("evals", lambda: run.evals)
        self.step("summary", run.summary)
        self.step("repr", lambda: repr(run))
        self.step("grokinterp info", lambda: _cli_quiet("info", self.path))
        for e in list(run.epochs):
            self.step(f"params({e})", lambda e=e: run.params(int(e)), lambda v, e=e: self._params_same(e, v))
        if len(run.epochs):
            def last_logits():
                e = run.resolve_epoch(-1)
                return e, run.model(e)(_PROBE)

            self.step("model(-1)", last_logits, lambda v: o["logits"].get(v[0]) == _bits(v[1]))
            self.step("stacks()", lambda: (run.epochs.copy(), run.stacks()),
                      lambda v: len(v[1]["embed.W_E"]) == len(run.epochs) and
                      all(self._stack_same(k, run.epochs, s) for k, s in v[1].items()))
            self.step("iter_chunks(2)", lambda: list(run.iter_chunks(2)),
                      lambda v: all(self._stack_same(k, eps, s) for eps, d in v for k, s in d.items()))
        if len(run.epochs):
            self.step("Fourier norms", lambda: embed_fourier_norms(run.stack("embed.W_E"), run.p))
            self.step("grid forward", lambda: grid_forward(run.stacks(epochs=run.epochs[-2:]), run.config.model))
            self.step("key frequencies", lambda: key_frequencies(run.params(-1)))

        def state():
            meta, tensors = run.training_state()
            return meta, {k: _bits(v) for k, v in tensors.items()}

        self.step("training_state", state, lambda v: v == o["state"])

        def trainer_reads_state():
            rng = torch.get_rng_state()
            try:
                trn, tst = run.split_pairs()
                _Trainer(run.config, run.path, torch.device("cpu"), trn, tst).load_state(run)
            finally:
                torch.set_rng_state(rng)

        self.step("trainer's state loader", trainer_reads_state)
        if run.epochs.tolist() != o["epochs"] and not (run.problems and self._warned()):
            _STATS["wrong_silent"] += 1
            self.failures.append(f"checkpoints {sorted(set(o['epochs']) - set(run.epochs.tolist()))} vanished "
                                 f"without a warning naming their file")


def _cli_quiet(*args) -> int:
    code, _, err = cli_here(args[0], str(args[1]))
    if "Traceback" in err:
        raise AssertionError(err)
    return code


def _trusted_uses(path: Path) -> list[str]:
    """Without the manifest checks (``check=False``) the structural checks alone must still hold:
    nothing may crash or hang (values are not compared: such a load trusts its storage)."""
    failures = []

    def step(fn):
        try:
            fn()
        except GrokinterpError:
            pass
        except _Hang:
            raise
        except Exception as e:  # noqa: BLE001
            _STATS["foreign"] += 1
            failures.append(f"trusted: foreign exception {type(e).__name__}: {str(e)[:300]}")

    holder = []
    step(lambda: holder.append(g.load_run(path, check=False)))
    if holder:
        run = holder[0]
        for fn in (lambda: run.metrics, run.summary, lambda: run.stacks(), lambda: run.model(-1)(_PROBE),
                   run.training_state, lambda: list(run.iter_chunks(3))):
            step(fn)
    return failures


def _fuzz_one(runs, oracle, data, force: str | None = None) -> None:
    """One mutated run directory (1-3 mutations; the first of kind ``force`` when given)."""
    base, twin, sibling = runs
    files = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()) + ["shards/"]
    root = Path(tempfile.mkdtemp(prefix="gi-fuzz-"))
    try:
        run = root / "run"
        scratch = root / "outside"
        scratch.mkdir()
        shutil.copytree(base, run)
        mutated = set()
        signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)  # the harness must not hang either (default
        # SIGALRM action: the process ends, and the test run with it)
        for i in range(data.draw(st.integers(1, 3), label="number of mutations")):
            present = [f for f in files if os.path.lexists(run / f.rstrip("/"))]
            if i == 0 and force is not None:
                present = [f for f in present if force in _kinds_for(f)]
            if not present:
                break
            rel = data.draw(st.sampled_from(present), label="file")
            kind = _mutate_file(run, rel, data, (twin, sibling), scratch, force if i == 0 else None)
            _KINDS[kind] = _KINDS.get(kind, 0) + 1
            _STATS["mutations"] += 1
            mutated.add(rel)
        _STATS["inputs"] += 1
        tree = _tree(run)
        changed = tree != oracle["tree"] and not _only_optional_digests_dropped(tree, oracle["tree"])
        signal.setitimer(signal.ITIMER_REAL, 0)
        _STATS["changed"] += changed
        case = _Case(run, oracle, mutated)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            case.caught = caught
            try:
                with _timeout(CASE_TIMEOUT_S):
                    case.run(changed)
                    if _STATS["inputs"] % 4 == 0:
                        case.failures += _trusted_uses(run)
            except _Hang:
                _STATS["hangs"] += 1
                case.failures.append(f"HANG: the case ran past {CASE_TIMEOUT_S} s")
        assert not case.failures, (sorted(mutated), case.failures)
    finally:
        shutil.rmtree(root, ignore_errors=True)


_FUZZ_SETTINGS = dict(deadline=None, database=None, print_blob=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.function_scoped_fixture])


def test_a_clean_run_loads_identically_with_zero_warnings(runs, oracle):
    """The oracle fixture itself loads strictly with warnings as errors; a copy does too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = g.load_run(runs[0])
        run.check()
        assert run.problems == [] and run.epochs.tolist() == oracle["epochs"]
        twin = g.load_run(runs[1])
        assert all(_bits(twin.stack(k)) == _bits(run.stack(k)) for k in run.stacks())  # the twin is identical


@settings(max_examples=N_FUZZ, derandomize=True, **_FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_mutated_run_directories(runs, oracle, data):
    _fuzz_one(runs, oracle, data)


_ALL_KINDS = sorted({k for rel in ("run.json", "metrics.csv", "shards/ckpt_00000000_00000010.safetensors",
                                    "shards/") for k in _kinds_for(rel)})


@pytest.mark.parametrize("kind", _ALL_KINDS)
@settings(max_examples=3, derandomize=True, **_FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_every_kind_of_mutation(runs, oracle, kind, data):
    """Every kind of mutation, whatever the sample above drew: three inputs whose first mutation is it."""
    _fuzz_one(runs, oracle, data, force=kind)


@pytest.mark.slow
@settings(max_examples=N_FUZZ_SLOW, **_FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_mutated_run_directories_long(runs, oracle, data):
    _fuzz_one(runs, oracle, data)
