"""Group tasks and task structures: group axioms, labels against plain Python, structure coordinates,
the operation catalogue, and how configs and the CLI take the vocabulary from a group."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _helpers import cli

from grokinterp.config import TaskConfig, make_config
from grokinterp.errors import ConfigError
from grokinterp.tasks import (
    CyclicDifference,
    CyclicSum,
    DiscreteLog,
    GroupStructure,
    fixed_size,
    get_group,
    get_task,
    make_dataset,
)
from grokinterp.tasks.algebra import primitive_root


@pytest.mark.parametrize("name, order", [("S3", 6), ("S4", 24), ("S5", 120), ("A4", 12), ("A5", 60),
                                         ("D3", 6), ("D7", 14), ("C5", 5)])
def test_groups_satisfy_the_axioms(name, order):
    G = get_group(name[0], int(name[1:]))
    M = G.mult
    assert G.order == order and M.shape == (order, order)
    e = np.arange(order)
    assert (M[0] == e).all() and (M[:, 0] == e).all()  # identity at index 0
    assert (M[e, G.inverse] == 0).all() and (M[G.inverse, e] == 0).all()
    assert all(sorted(row) == list(range(order)) for row in M.tolist())  # Latin square
    assert (M[M[:, :, None], e[None, None, :]] == M[e[:, None, None], M[None, :, :]]).all()  # associative


def test_permutation_groups_compose_as_functions():
    G = get_group("S", 4)
    for g, h in itertools.product(range(24), repeat=2):
        s, t = G.elements[g], G.elements[h]
        assert G.elements[G.mult[g, h]] == tuple(s[t[i]] for i in range(4))  # (σ·τ)(i) = σ(τ(i))
    A = get_group("A", 4)
    assert all(sum(1 for i in range(4) for j in range(i + 1, 4) if p[i] > p[j]) % 2 == 0 for p in A.elements)
    assert len(get_group("S", 5).conjugacy_classes) == 7 and len(get_group("A", 5).conjugacy_classes) == 5


def test_dihedral_group_is_the_polygon_symmetries():
    n = 7
    G = get_group("D", n)
    ang = 2 * np.pi / n

    def mat(k, e):  # r^k s^e as a 2x2 matrix: rotation by k·2π/n after the reflection s = diag(1, -1)
        R = np.array([[np.cos(k * ang), -np.sin(k * ang)], [np.sin(k * ang), np.cos(k * ang)]])
        return R @ np.diag([1.0, -1.0]) if e else R

    for g, h in itertools.product(range(2 * n), repeat=2):
        assert np.allclose(mat(*G.elements[g]) @ mat(*G.elements[h]), mat(*G.elements[G.mult[g, h]]))


@pytest.mark.parametrize("name, word", [("S4", lambda M, inv, g, h: M[g, h]),
                                        ("S4_conj", lambda M, inv, g, h: M[M[g, h], inv[g]]),
                                        ("S4_xyx", lambda M, inv, g, h: M[M[g, h], g]),
                                        ("D5", lambda M, inv, g, h: M[g, h])])
def test_group_task_labels_and_structure(name, word):
    task = get_task(name, fixed_size(name))
    G = task.group
    ds = task.dataset()
    assert task.n == G.order == task.d_vocab - 1 and len(ds) == G.order ** 2
    for (g, h, eq), c in zip(ds.tokens.tolist(), ds.labels.tolist()):
        assert eq == G.order and c == word(G.mult, G.inverse, g, h)
    s = task.structure
    assert isinstance(s, GroupStructure) and s.group == G
    assert (s.element_token[s.coords] == task.label_grid()).all()  # every label is the token of s(g, h)


@pytest.mark.parametrize("structure, op", [(CyclicSum(11), "add"), (CyclicDifference(11), "sub"),
                                           (DiscreteLog.of(11, "mul"), "mul"), (DiscreteLog.of(11, "div"), "div")])
def test_modular_structures_give_the_labels_on_their_block(structure, op):
    task = get_task(op, 11)
    assert task.structure == structure
    labels = task.label_grid()
    s = structure
    blk = s.block
    assert (s.element_token[s.coords[blk]] == labels[blk]).all()
    # on the block, b ↦ s(a, b) is a bijection onto the group for every a (the key-term orthogonality)
    grid = s.coords.reshape(11, 11)
    rows = [grid[a][grid[a] >= 0] for a in range(11) if (grid[a] >= 0).any()]
    assert all(sorted(r.tolist()) == list(range(s.group.order)) for r in rows)
    if op in ("mul", "div"):
        assert len(rows) == 10 and s.group.order == 10
        outside = np.setdiff1d(task.valid_pairs(), blk)
        a, b = np.divmod(outside, 11)
        assert ((a == 0) | (b == 0)).all() and (labels[outside] == 0).all()  # the 0 row (and column)


def test_discrete_log_generator():
    for p in (3, 5, 7, 11, 13, 97, 113):
        g = primitive_root(p)
        assert sorted(pow(g, i, p) for i in range(p - 1)) == list(range(1, p))
        assert all(len({pow(h, i, p) for i in range(p - 1)}) < p - 1 for h in range(1, g))  # the smallest
    s = DiscreteLog.of(13, "mul")
    assert s.generator == 2 and s.token_element[2] == 1 and s.token_element[1] == 0 and s.token_element[0] == -1
    assert get_task("mul", 12).structure is None  # composite p: no cyclic group of units


@pytest.mark.parametrize("op, fn", [
    ("div_odd_sub", lambda a, b, p: (a * pow(b, p - 2, p)) % p if b % 2 else (a - b) % p),
    ("x2_y2", lambda a, b, p: (a * a + b * b) % p),
    ("x2_xy_y2_x", lambda a, b, p: (a * a + a * b + b * b + a) % p),
    ("x3_xy", lambda a, b, p: (a ** 3 + a * b) % p),
    ("x3_xy2_y", lambda a, b, p: (a ** 3 + a * b * b + b) % p),
])
def test_power_et_al_catalogue(op, fn):
    p = 13
    ds = make_dataset(p, op)
    assert len(ds) == p * p and get_task(op, p).structure is None
    assert all(c == fn(a, b, p) for (a, b, _), c in zip(ds.tokens.tolist(), ds.labels.tolist()))


def test_configs_take_the_vocabulary_from_the_group():
    cfg = make_config("tiny", operation="S5")
    assert cfg.task.p == cfg.model.p == 120 and cfg.model.d_vocab == 121 and cfg.model.d_vocab_out == 120
    assert make_config("tiny", operation="D59").task.p == 118
    assert make_config("tiny", operation="S5", p=120).task.p == 120
    assert TaskConfig(operation="A5").p == 60 and TaskConfig().p == 113
    with pytest.raises(ConfigError, match=r"^task\.p: S5 is a group of order 120"):
        make_config("tiny", operation="S5", p=31)
    with pytest.raises(ConfigError, match=r"^task\.p"):
        TaskConfig(operation="S5", p=31)
    for bad in ("S7", "A2", "D2", "C2", "Q8"):
        with pytest.raises(ConfigError, match=r"^task\.operation"):
            make_config("tiny", operation=bad)
    back = make_config("tiny", operation="S5").replace(lr=1e-3)
    assert back.task.p == 120 and back.train.lr == 1e-3


def test_cli_lists_the_catalogue_and_refuses_p_for_a_group(tmp_path):
    out = cli("train", "--help").stdout
    for name in ("div_odd_sub", "x3_xy2_y", "x2_y2", "S5_conj", "S5_xyx", "D59", "A5"):
        assert name in out
    r = cli("train", "--preset", "tiny", "--operation", "S4", "--p", "31", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "task.p: S4 is a group of order 24" in r.stderr
    assert not (tmp_path / "x").exists()
    r = cli("train", "--preset", "tiny", "--operation", "S9", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "S9 is not supported" in r.stderr and r.stderr.count("\n") == 1
