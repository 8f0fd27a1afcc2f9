"""recipes/mods.toml (the paper pipeline) runs end to end with tiny models substituted for the hub models."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import polars as pl
import tomli_w

import dqf

ROOT = Path(__file__).resolve().parents[2]
POOL = ROOT / "examples" / "data" / "alpaca_2k.jsonl"
N_ROWS, K_SEED, K_AUG = 60, 6, 5


def _substitute(recipe: dict, tmp_path: Path, reward: Path, bert: Path, llama: Path) -> dict:
    """Swap hub models for tiny local ones and shrink sizes; every step, plugin and threshold stays the paper's."""
    recipe["input"]["path"] = str(tmp_path / "pool.jsonl")
    recipe["output"]["dir"] = str(tmp_path / "out")
    steps = {s["id"]: s for s in recipe["steps"]}
    steps["quality"]["score"]["model"] = str(reward)
    for sid, k in (("seed", K_SEED), ("augmented", K_AUG)):
        steps[sid]["select"]["k"] = k
        steps[sid]["select"]["embedder"]["model"] = str(bert)
    probe = steps["necessity"]["probe"]
    probe.update(base_model=str(llama), epochs=1, max_length=64, max_new_tokens=6, num_beams=2, batch_size=8,
                 gradient_accumulation_steps=1, train_batch_size=2, learning_rate=1e-3)
    probe["judge"]["model"] = str(reward)
    return recipe


def test_paper_recipe_runs_with_tiny_models(tmp_path, tiny_models):
    import tiny_models as tm

    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:N_ROWS]]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    question = lambda r: r["instruction"] + ("\n" + r["input"] if r["input"] else "")  # noqa: E731
    reward = tm.tiny_reward_model(tmp_path / "reward", [(question(r), r["output"]) for r in rows])

    original = tomllib.loads((ROOT / "recipes" / "mods.toml").read_text(encoding="utf-8"))
    assert [s["id"] for s in original["steps"]] == ["quality", "seed", "necessity", "augmented"]
    recipe = _substitute(original, tmp_path, reward, tiny_models["bert"], tiny_models["llama"])
    path = tmp_path / "mods.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")

    result = dqf.run(path)
    steps = {s["id"]: s for s in result.manifest["steps"]}
    rows_pq = pl.read_parquet(tmp_path / "out" / "rows.parquet")

    # Quality keeps exactly the rows the reward model scores above 0 (about half, by construction).
    kept_quality = rows_pq.filter(pl.col("step_quality") == "kept")
    assert kept_quality.height == (rows_pq["reward"] > 0).sum() == steps["quality"]["rows_out"]
    assert 0 < kept_quality.height < N_ROWS
    # Seed and augmented have the configured sizes, do not overlap, and make up the whole output.
    seed = set(rows_pq.filter(pl.col("step_seed") == "kept")["id"])
    aug = set(rows_pq.filter(pl.col("step_augmented") == "kept")["id"])
    necessary = set(rows_pq.filter(pl.col("step_necessity") == "kept")["id"])
    assert len(seed) == K_SEED
    assert 0 < len(aug) <= K_AUG and aug <= necessary
    assert not seed & aug
    assert set(rows_pq.filter("selected")["id"]) == seed | aug
    assert result.manifest["counts"]["selected"] == len(seed | aug)
    # Necessity: every high-quality row was answered by the seed-tuned model and judged.
    probed = rows_pq.filter(pl.col("step_necessity").is_not_null())
    assert probed.height == kept_quality.height
    assert probed["generated"].null_count() == 0 and probed["necessity"].null_count() == 0
    assert set(probed.filter(pl.col("necessity") < 0.0)["id"]) == necessary
    assert steps["necessity"]["stats"]["finetune"] == "trained"
