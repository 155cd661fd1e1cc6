"""benchmarks/compare.py's pieces: LoRA ranks matched to a parameter budget, BitFit trains only biases, the
LoRA row through real peft on a tiny DnCNN, every row on the same batches, and the table."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from _scripts import ROOT

pytest.importorskip("spandrel")
pytest.importorskip("peft")
sys.path.insert(0, str(ROOT / "benchmarks"))  # a dataclass needs its module in sys.modules: import, not exec
compare = importlib.import_module("compare")


def _dncnn(nb: int = 6):
    from spandrel.architectures.DnCNN.__arch.network_dncnn import DnCNN

    torch.manual_seed(0)
    net = DnCNN(in_nc=3, out_nc=3, nc=16, nb=nb, act_mode="R").eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_parse_row_keeps_a_referenced_row_whole():
    assert compare.parse_row("spt:dncnn-light,lr=3e-3") == ("spt", {"preset": "dncnn-light", "lr": "3e-3"})
    family, opts = compare.parse_row("lora:params=@unit:fusion=lowrank,hidden=1,lr=1e-3,alpha=2")
    assert family == "lora" and opts == {"params": "@unit:fusion=lowrank,hidden=1", "lr": "1e-3", "alpha": "2"}
    with pytest.raises(ValueError, match="family"):
        compare.parse_row("adapter:x=1")
    # params=@ROW finds a row whatever its learning rate
    assert compare.without_lr("unit:fusion=lowrank,lr=1e-3,hidden=1") == "unit:fusion=lowrank,hidden=1"
    assert compare.without_lr("full") == "full"


@pytest.mark.parametrize("budget", [700, 2_000, 5_555, 14_592, 87_552])
def test_lora_ranks_meet_the_budget_within_ten_percent(budget):
    layers = [f"model.{2 * i}" for i in range(1, 19)]
    per_rank = dict.fromkeys(layers, 64 * 9 + 64)
    ranks = compare.lora_ranks(layers, per_rank, budget)
    got = sum(per_rank[n] * r for n, r in ranks.items())
    if budget >= sum(per_rank.values()) * 0.9:  # below rank 1 everywhere no spread can match
        assert abs(got - budget) <= 0.1 * budget, (ranks, got)
    assert all(r >= 1 for r in ranks.values())


def test_the_lora_row_goes_through_peft_and_matches_the_unit_row():
    net = _dncnn()
    unit, prior, _ = compare.build_row(net, "unit", {"fusion": "lowrank", "hidden": "2", "depth": "1"}, 0, 3)
    assert prior == "none"  # a lowrank unit reads no prior
    budget = compare.trainable(unit, "unit")
    lora, prior, extra = compare.build_row(net, "lora", {"params": str(budget)}, 0, 3, match=budget)
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    assert isinstance(lora, PeftModel) and prior == "none"
    adapted = sorted(n for n, m in lora.named_modules() if isinstance(m, LoraLayer))
    assert len(adapted) == len(compare.hidden_convs(net))  # the same layers as the unit row
    n_lora = compare.trainable(lora, "lora")
    assert abs(n_lora - budget) <= 0.1 * budget
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(lora(x), net(x))  # LoRA starts as the backbone (B = 0)


def test_bitfit_trains_the_biases_and_nothing_else():
    net = _dncnn()
    model, _, _ = compare.build_row(net, "bitfit", {}, 0, 3)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith("bias") for n in names)
    assert len(names) == sum(1 for n, _ in net.named_parameters() if n.endswith("bias"))
    assert not any(p.requires_grad for p in net.parameters())  # the backbone given is untouched


def _tiny_task(net):
    rng = np.random.default_rng(0)
    clean = [rng.random((24, 24, 3), dtype=np.float32) for _ in range(3)]
    noisy = [[np.clip(c + rng.normal(0, 0.1, c.shape).astype(np.float32), 0, 1)] for c in clean]
    pset = compare.qd.PriorSet(clean, noisy, names=["a", "b", "c"])
    return compare.Task("tiny", net, pset, {"val": pset}, 3, {"arch": "tiny"})


def test_every_row_trains_on_the_same_batches_and_the_table_renders(monkeypatch, tmp_path):
    net = _dncnn(5)
    monkeypatch.setattr(compare, "load_task", lambda args: _tiny_task(net))
    seen: dict[str, list[bytes]] = {}
    real = compare.train_model

    def recording(model, sched, pset, prior, lr, patch, full=False, **kw):
        seen.setdefault(str(type(model).__name__) + str(full) + str(lr), []).append(sched.tobytes())
        return real(model, sched, pset, prior, lr, patch, full=full, **kw)

    monkeypatch.setattr(compare, "train_model", recording)
    rows = [
        "frozen",
        "unit:fusion=lowrank,hidden=1,depth=1",
        "lora:params=@unit:fusion=lowrank,hidden=1,depth=1",
        "full",
        "bitfit",
    ]
    args = compare.parse_args(
        ["--task", "cdncnnb75", "--rows", *rows, "--steps", "2", "--batch", "2", "--patch", "12", "--seeds", "0"]
        + ["--forward-size", "16", "--forward-repeats", "1", "--json", str(tmp_path / "r.json")]
    )
    doc = compare.run(args)
    scheds = {s for v in seen.values() for s in v}
    assert len(seen) == 4 and len(scheds) == 1  # four trained rows, one schedule
    r = doc["rows"]
    assert r["frozen"]["trainable"] == 0 and r["full"]["trainable"] == sum(p.numel() for p in net.parameters())
    assert r["bitfit"]["file_bytes"] > 0 and r["unit:fusion=lowrank,hidden=1,depth=1"]["file_bytes"] > 0
    assert "forward_seconds_merged" in r[rows[2]]["seeds"][0]
    assert all(s["memory_bytes"] > 0 for k, v in r.items() if k != "frozen" for s in v["seeds"])
    table = compare.render(doc)
    assert table.count("\n| ") == 1 + 1 + len(rows)  # header, rule, one line per row
    assert (tmp_path / "r.json").is_file()


def test_interleaved_timing_times_every_row_and_the_merged_lora(monkeypatch, capsys):
    net = _dncnn(5)
    monkeypatch.setattr(compare, "load_task_backbone", lambda args: (net, 3))
    unit = "unit:fusion=lowrank,hidden=1,depth=1"
    argv = ["--task", "cdncnnb75", "--rows", unit, f"lora:params=@{unit}", "full", "--timing-rounds", "1"]
    assert compare.main(argv + ["--forward-size", "16", "--batch", "2", "--patch", "12"]) == 0
    out = capsys.readouterr().out
    for row in ("frozen", unit, f"lora:params=@{unit} (merged)", "full"):
        assert f"| {row} |" in out
    assert not any(p.requires_grad for p in net.parameters())  # timing trains copies, never the backbone


def test_render_merges_runs_of_other_seeds_and_of_rows_added_later():
    def doc(seeds, rows):
        entry = lambda s: {"seed": s, "psnr": {"t": 20.0 + s}, "ssim": {"t": 0.5}}  # noqa: E731
        return {
            "task": "cdncnnb75",
            "split": "test",
            "steps": 100,
            "seeds": seeds,
            "rows": {r: {"family": "unit", "seeds": [entry(s) for s in seeds]} for r in rows},
        }

    merged = compare.merge([doc([0], ["a", "b"]), doc([1, 2], ["a", "b"]), doc([0, 1, 2], ["c"])])
    assert merged["seeds"] == [0, 1, 2]
    assert [s["seed"] for s in merged["rows"]["a"]["seeds"]] == [0, 1, 2]
    assert [s["seed"] for s in merged["rows"]["c"]["seeds"]] == [0, 1, 2]
    with pytest.raises(ValueError, match="row 'a' is in two runs of seed"):
        compare.merge([doc([0], ["a"]), doc([0], ["a"])])
    with pytest.raises(ValueError, match="one task"):
        compare.merge([doc([0], ["a"]), {**doc([1], ["a"]), "task": "polyu"}])
