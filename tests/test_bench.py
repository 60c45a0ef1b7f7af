"""The benchmark suite measures the trainer's real step and reads Snakemake's benchmark files (no speeds
are asserted: these check that what is timed is what it claims to be)."""

import torch

from saelib.bench import bench_rules, floor_group, sae_lens_group, saelib_group


def test_benchmarked_step_is_the_training_step():
    step = saelib_group(3, 16, 64, 256, torch.device("cpu"))
    out0, terms0 = step()
    for _ in range(30):
        out, terms = step()
    assert (terms.total < terms0.total).all() and terms.total.shape == (3,)
    assert set(terms._fields) == {"mse", "sparsity", "freq", "ghost", "total"}
    floor_group(3, 16, 64, 256, torch.device("cpu"))()
    sae_lens_group(3, 16, 64, 256, torch.device("cpu"))()  # sae-lens's MultiSAETrainer, stepped on our batch


def test_peak_memory_is_measured_in_a_fresh_process():
    from saelib.bench import peak_memory

    small, big = (peak_memory("saelib", R, 16, 256, 512, "cpu", "float32") for R in (1, 8))
    assert 0 < small < big


def test_rule_table_sums_snakemake_benchmark_files(tmp_path):
    head = "s\th:m:s\tmax_rss\n"
    (tmp_path / "train_0.tsv").write_text(head + "12.5\t0:00:12\t100\n")
    (tmp_path / "lm.tsv").write_text(head + "3.0\t0:00:03\t100\n")
    rows = bench_rules("smoke", tmp_path)
    assert "| train_0 | 12.5 |" in rows and "| lm | 3.0 |" in rows and rows[-1] == "| **sum** | 15.5 |"
    assert "no Snakemake benchmark files" in bench_rules("smoke", tmp_path / "missing")[0]
