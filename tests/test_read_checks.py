"""Checks on read: every file a Run reads is checked against the manifest before its bytes are used.

Each kind of silent wrong load the adversarial test of issue 10 found is tried one by one (a flipped
bit in a tensor, a shard from another run, a deleted shard, a relabelled epoch, swapped or aliased
header offsets, an edited value in metrics.csv or run.json): each is refused or warned about, naming
the file and the checkpoints left out. Also: a clean run loads with zero warnings; the checks are
lazy (a shard is hashed when first used, once); the opt-out; only regular files inside the run are
opened (FIFOs, devices, sockets, directories, links out of the run: a clear error, never a hang);
JSON is size-capped.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import cli, deadline, make_socket

import grokinterp as g
from grokinterp.errors import RunError
from grokinterp.store import integrity
from grokinterp.store import layout as _io
from grokinterp.store.run import RunWarning

CFG = g.make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, epochs=40, every=10, log_early=0,
                    flush_every=2, eval_every=10)
MIDDLE = "shards/ckpt_00000020_00000030.safetensors"  # shards hold (0, 10), (20, 30), (40)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reads")
    return (g.train(CFG, root / "base", progress=False).path,
            g.train(CFG.replace(init_seed=1), root / "sibling", progress=False).path)


@pytest.fixture
def run_dir(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs[0], out)
    return out


def _deadline(seconds: float = 30):
    return deadline(seconds)


def _st_parts(path: Path) -> tuple[int, dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8: 8 + n]), raw


def _middle_left_out(run_dir: Path, base: Path, why: str) -> None:
    """The damaged middle shard's checkpoints go (warning naming file and epochs), the rest stays
    identical; strict refuses the run."""
    good = g.load_run(base)
    with pytest.warns(RunWarning, match=rf"ckpt_00000020_00000030.safetensors: .*{why}.*epochs 20, 30 are left out"):
        run = g.load_run(run_dir)
        stacks = run.stacks()
    assert run.epochs.tolist() == [0, 10, 40] and len(run.problems) == 1 and MIDDLE.split("/")[1] in run.problems[0]
    for name, s in stacks.items():
        assert torch.equal(s, good.stack(name, [0, 10, 40])), name
    with pytest.raises(RunError, match=why):
        g.load_run(run_dir, strict=True)


# -- the silent wrong loads of the issue, one by one ----------------------------------------------
def test_a_clean_run_loads_with_zero_warnings_and_checks_clean(run_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = g.load_run(run_dir, strict=True)
        assert run.check() == [] and run.checked
        run.model(-1), run.metrics, run.training_state()


def test_a_flipped_bit_in_a_tensor_is_caught(run_dir, runs):
    path = run_dir / MIDDLE
    n, header, raw = _st_parts(path)
    begin = header["embed.W_E"]["data_offsets"][0]
    buf = bytearray(raw)
    buf[8 + n + begin + 3] ^= 0x40  # the example: W_E[0, 0, 0] became -7.9e37
    path.write_bytes(bytes(buf))
    run = g.load_run(run_dir)  # same size: nothing to see until the shard is used
    assert run.epochs.tolist() == [0, 10, 20, 30, 40] and run.problems == []
    with pytest.warns(RunWarning, match="ckpt_00000020_00000030.safetensors: shard is damaged or was replaced"):
        with pytest.raises(RunError, match=r"damaged or was replaced.*epochs 20, 30 are left out"):
            run.params(20)
    assert run.epochs.tolist() == [0, 10, 40]
    with pytest.raises(RunError, match="no checkpoint at epoch 30.*damaged"):
        run.params(30)
    assert torch.equal(run.params(40)["embed.W_E"], g.load_run(runs[0]).params(40)["embed.W_E"])
    _middle_left_out(run_dir, runs[0], "damaged or was replaced")


def test_a_shard_from_another_run_of_the_same_config_is_caught(run_dir, runs):
    shutil.copyfile(runs[1] / MIDDLE, run_dir / MIDDLE)
    _middle_left_out(run_dir, runs[0], "damaged or was replaced")


def test_a_deleted_shard_does_not_vanish_silently(run_dir, runs):
    (run_dir / MIDDLE).unlink()
    _middle_left_out(run_dir, runs[0], "listed in the manifest but missing")
    # deleted together with its manifest entry: progress.json still says 5 checkpoints were written
    m = json.loads((run_dir / "manifest.json").read_text())
    del m["files"][MIDDLE]
    (run_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(RunWarning, match=r"no shard in the manifest holds the checkpoints at epochs 20, 30, between"):
        g.load_run(run_dir)
    assert any("holds the checkpoints at epochs [20, 30], between" in p for p in g.verify(run_dir).problems())
    # the last shard too: progress.json still says 5 checkpoints were written
    last = "shards/ckpt_00000040_00000040.safetensors"
    (run_dir / last).unlink()
    del m["files"][last]
    (run_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(RunWarning, match=r"progress.json: says 5 checkpoints were written, but no shard .* epochs 20, 30, 40;"):
        g.load_run(run_dir)
    assert any("no shard in the manifest holds epochs [20, 30, 40]" in p for p in g.verify(run_dir).problems())


@pytest.mark.parametrize("bless", [False, True])
def test_a_relabelled_epoch_is_caught(run_dir, runs, bless):
    from safetensors.numpy import load_file, save_file

    path = run_dir / MIDDLE
    tensors = {k: np.array(v) for k, v in load_file(str(path)).items()}
    tensors["epochs"][1] = 25  # checkpoint 30 relabelled 25
    save_file(tensors, str(path), metadata={"format": "grokinterp-shard"})
    if bless:  # and the manifest rewritten to match: the schedule still disagrees
        m = json.loads((run_dir / "manifest.json").read_text())
        m["files"][MIDDLE] = _io.digest_entry(path.read_bytes())
        (run_dir / "manifest.json").write_text(json.dumps(m))
        _middle_left_out(run_dir, runs[0], r"holds checkpoints of epochs 20, 25, but its name and the run's "
                                           r"checkpoint schedule say 20, 30")
        report = g.verify(run_dir)
        assert not report.ok and any("holds checkpoints of epochs [20, 25]" in x for x in report.inconsistent)
    else:
        _middle_left_out(run_dir, runs[0], "damaged or was replaced")


def _bless(run_dir: Path, rel: str, old: str | None = None) -> None:
    """Rewrite the manifest to match ``rel`` as it is now (``old``: an entry to drop)."""
    m = json.loads((run_dir / "manifest.json").read_text())
    if old is not None:
        del m["files"][old]
    m["files"][rel] = _io.digest_entry((run_dir / rel).read_bytes())
    (run_dir / "manifest.json").write_text(json.dumps(m))


def test_a_consistently_relabelled_shard_is_blamed_not_the_intact_one_it_overlaps(run_dir, runs):
    first, bad = "shards/ckpt_00000000_00000010.safetensors", "shards/ckpt_00000010_00000020.safetensors"
    (run_dir / first).rename(run_dir / bad)  # epochs 0 and 10 under a name that says 10 and 20 ...
    _bless(run_dir, bad, old=first)  # ... and the manifest rewritten to match: 20_30 overlaps it at epoch 20
    with pytest.warns(RunWarning) as caught:
        run = g.load_run(run_dir)
        stacks = run.stacks()
    text = " ".join(str(w.message) for w in caught)
    assert "ckpt_00000010_00000020.safetensors: its name says epochs 10, 20, but it holds checkpoints of epochs 0, " \
           "10 (and ckpt_00000020_00000030.safetensors holds what its name says)" in text
    assert not any(p.startswith(str(run_dir / MIDDLE)) for p in run.problems), run.problems  # the intact one
    assert run.epochs.tolist() == [20, 30, 40]
    good = g.load_run(runs[0])
    for name, st in stacks.items():
        assert torch.equal(st, good.stack(name, [20, 30, 40])), name


@pytest.mark.parametrize("header, why", [
    ("epoch,train_loss,train_acc,test_loss,test_acc,extra,lr", r"its header begins epoch, train_loss, train_acc, "
     r"test_loss, test_acc, extra; the columns every metrics table begins with are .*, lr, in this order"),
    ("epoch,train_loss,train_acc,test_loss,test_acc,lr,live_extra", r"its header names 7 columns but row 1 \(epoch 0\) "
     r"holds 6 values: the header does not match the rows")])
def test_a_metrics_header_that_does_not_match_its_rows_is_named(run_dir, header, why):
    path = run_dir / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(header + "\n" + "".join(lines[1:]))  # the lr values would read as an all-NaN lr column
    _bless(run_dir, "metrics.csv")
    run = g.load_run(run_dir)
    with pytest.raises(RunError, match="metrics.csv: metrics table is inconsistent: " + why):
        _ = run.metrics


@pytest.mark.parametrize("how", ["swapped", "aliased"])
def test_swapped_or_aliased_header_offsets_are_caught(run_dir, runs, how):
    path = run_dir / MIDDLE
    n, header, raw = _st_parts(path)
    q, k = header["blocks.0.attn.W_Q"], header["blocks.0.attn.W_K"]
    if how == "swapped":
        q["data_offsets"], k["data_offsets"] = k["data_offsets"], q["data_offsets"]
    else:
        k["data_offsets"] = list(q["data_offsets"])
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b" " * (n - len(h)) + raw[8 + n:] if len(h) <= n else
                     struct.pack("<Q", len(h)) + h + raw[8 + n:])
    _middle_left_out(run_dir, runs[0], "damaged or was replaced|the manifest records")
    if how == "aliased":  # refused by structure too, where the storage is trusted
        with pytest.warns(RunWarning, match="'blocks.0.attn.W_[KQ]' and 'blocks.0.attn.W_[KQ]' overlap"):
            g.load_run(run_dir, check=False).check()


def test_edited_values_in_metrics_or_run_json_are_caught(run_dir):
    path = run_dir / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = lines[5].replace(",", ",9", 1)  # the train loss at epoch 4, still a valid table
    path.write_text("".join(lines))
    run = g.load_run(run_dir)
    with pytest.raises(RunError, match="metrics.csv: metrics table is damaged or was replaced"):
        _ = run.metrics
    assert "metrics.csv" in run.summary()["metrics_error"]
    info = json.loads((run_dir / "run.json").read_text())
    info["config"]["train"]["lr"] = 0.5
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    with pytest.raises(RunError, match="run.json: run metadata is damaged or was replaced"):
        g.load_run(run_dir)
    res = cli("info", str(run_dir))
    assert res.returncode == 2 and "run.json" in res.stderr and "Traceback" not in res.stderr


# -- lazy, cached, and the opt-out ----------------------------------------------------------------
def test_checks_are_lazy_and_once_per_file(run_dir, monkeypatch):
    seen: list[int] = []
    real = integrity.entry_matches

    def counting(entry, data):
        seen.append(entry["size"])
        return real(entry, data)

    monkeypatch.setattr(integrity, "entry_matches", counting)
    run = g.load_run(run_dir)
    at_load = len(seen)  # run.json, the split and progress.json (it says which checkpoints must exist)
    assert at_load == 3
    run.params(-1)
    run.params(40)
    run.model(-1)
    assert len(seen) == at_load + 1  # the last shard, hashed once
    run.stacks()
    run.stacks()
    assert len(seen) == at_load + 3


def test_the_opt_out(run_dir, monkeypatch):
    path = run_dir / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = lines[5].replace(",", ",9", 1)
    path.write_text("".join(lines))
    assert len(g.load_run(run_dir, check=False).metrics) == 41  # trusted: read as it is
    monkeypatch.setenv("GROKINTERP_TRUST_STORAGE", "1")
    run = g.load_run(run_dir)
    assert not run.checked and len(run.metrics) == 41
    monkeypatch.setenv("GROKINTERP_TRUST_STORAGE", "0")
    with pytest.raises(RunError, match="damaged or was replaced"):
        _ = g.load_run(run_dir).metrics


def test_a_missing_or_malformed_manifest_refuses_with_the_way_out(run_dir):
    (run_dir / "manifest.json").write_text("{")
    with pytest.raises(RunError, match=r"manifest is not valid JSON.*cannot be checked.*check=False"):
        g.load_run(run_dir)
    (run_dir / "manifest.json").unlink()
    with pytest.raises(RunError, match=r"manifest is missing.*check=False"):
        g.load_run(run_dir)
    assert g.load_run(run_dir, check=False).epochs.tolist() == [0, 10, 20, 30, 40]


# -- only regular files inside the run ------------------------------------------------------------
def _replace(path: Path, kind: str, scratch: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        make_socket(path)
    elif kind.startswith("/dev/"):
        path.symlink_to(kind)
    elif kind == "outside":
        copy = scratch / path.name
        shutil.copyfile(scratch.parent / "run-copy" / path.relative_to(path.parents[1] if path.parent.name == "shards"
                                                                         else path.parent), copy)
        path.symlink_to(copy)


_WORDS = {"fifo": "is a FIFO", "directory": "is a directory", "socket": "is a socket",
          "/dev/zero": "is a symbolic link leading outside the run", "/dev/urandom": "is a symbolic link leading",
          "outside": "is a symbolic link leading outside the run"}


@pytest.mark.parametrize("kind", list(_WORDS))
def test_only_regular_files_inside_the_run_are_opened(run_dir, tmp_path, kind):
    shutil.copytree(run_dir, tmp_path / "run-copy")
    scratch = tmp_path / "elsewhere"
    scratch.mkdir()
    words = _WORDS[kind]
    with _deadline():
        _replace(run_dir / "progress.json", kind, scratch)
        run = g.load_run(run_dir)
        with pytest.raises(RunError, match=f"progress.json: progress file {words}"):
            _ = run.progress
        if kind in ("fifo", "/dev/zero"):  # the CLI too (a subprocess: a few seconds each)
            res = cli("info", str(run_dir))
            assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr
        report = g.verify(run_dir)
        assert "progress.json" in report.unreadable and words.split()[-1] in report.details["progress.json"]
        _replace(run_dir / MIDDLE, kind, scratch)
        with pytest.warns(RunWarning, match=f"ckpt_00000020_00000030.safetensors: shard {words}"):
            run = g.load_run(run_dir)
            run.stacks()
        assert run.epochs.tolist() == [0, 10, 40]
        _replace(run_dir / "manifest.json", kind, scratch)
        with pytest.raises(RunError, match=f"manifest.json: manifest {words}"):
            g.load_run(run_dir)
        with pytest.raises(RunError, match=f"manifest.json: manifest {words}"):
            g.verify(run_dir)
        if kind in ("fifo", "/dev/zero"):
            res = cli("verify", str(run_dir))
            assert res.returncode == 2 and words in res.stderr


def test_a_symlink_inside_the_run_is_followed(run_dir):
    os.replace(run_dir / "metrics.csv", run_dir / "metrics-moved.csv")
    (run_dir / "metrics.csv").symlink_to("metrics-moved.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(g.load_run(run_dir).metrics) == 41


def test_the_shard_directory_leading_outside_is_refused(run_dir, tmp_path):
    shutil.move(str(run_dir / "shards"), str(tmp_path / "shards-elsewhere"))
    (run_dir / "shards").symlink_to(tmp_path / "shards-elsewhere")
    with pytest.warns(RunWarning, match="symbolic link leading outside the run"):
        run = g.load_run(run_dir)
    assert run.epochs.tolist() == []


def test_json_is_size_capped_before_reading(run_dir):
    (run_dir / "progress.json").write_bytes(b" " * (2 << 20) + b"{}")
    with pytest.raises(RunError, match=r"progress.json: progress file is 2097154 bytes, more than the 1048576"):
        _ = g.load_run(run_dir, check=False).progress


def test_safetensors_must_tile_their_data_exactly(run_dir):
    path = run_dir / MIDDLE
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.warns(RunWarning, match="8 bytes after the last tensor"):
        g.load_run(run_dir, check=False).check()
